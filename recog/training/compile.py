"""The training step's faster modes: ``trainer.compile`` and ``trainer.onednn``.
(Over 300 lines: the modes share the fallback, the culprit search and the state a failed attempt restores.)

``trainer.compile=true``: the forward + loss (``TrainNet``) runs through ``paddle.jit.to_static``
(SOT: Python bytecode traced into PIR programs; what it cannot trace becomes a graph break and
runs in Python), and the backward as the programs' gradient programs. The optimizer update stays
eager: Paddle 3.3 cannot put a dygraph optimizer's update into a to_static program. The first step
runs in dygraph (the losses' label checks read tensors back to the host; see
``recog.losses._pairs.label_checks``), every later step through the program. A net that cannot be
converted trains in dygraph after one warning naming the sublayer that failed.

``trainer.onednn=true`` (CPU, compiled only; refused by the train stage, see ``ONEDNN_TRAINING_REFUSED``,
kept for ``scripts/bench_train.py --with-onednn``): the backbone alone is compiled, and
``FLAGS_use_mkldnn`` is on while its programs are built and run, so Paddle's PIR kernel selection
picks oneDNN kernels for its forward and backward; neck, head and loss run in dygraph. Measured
in Paddle 3.3.1 (PP-LCNet x1.0 recipe, batch 64 at 64 px):

- dygraph ignores both ``FLAGS_use_mkldnn`` and ``FLAGS_use_onednn`` (``paddle.set_flags`` or the
  environment): bit-identical weights after 6 steps, the same time, all 93 gradients present;
- the whole net compiled with oneDNN: the loss matches dygraph (3e-7) but all 93 gradients are
  wrong (relative error 0.03 to 4) - the "no gradients" seen before was this, in another form;
- the backbone compiled with oneDNN, the rest in dygraph: every gradient matches dygraph to < 1e-3
  relative (tests/training/test_compile.py checks weights after several steps), and the forward
  runs ~3x faster, but the backward ~1.4x slower than the native kernels': ~0.94x dygraph overall
  (median of 6 alternating steps; the ~12x seen before came from a backward that was wrong);
- ResNet50_vd (no dropout) with the backbone compiled with oneDNN: the step-3 loss differs from
  dygraph's by 0.6% (``scripts/bench_train.py backbone=resnet_vd ... --against paddleclas``): not
  the same function there;
- oneDNN for the backbone's forward program only (backward program built with the flag off):
  88 of 93 gradients wrong, no faster.

``auto`` (the default of each) is what ``scripts/bench_train.py --against paddleclas`` measured
fastest among the correct modes: the dygraph step with ``trainer.depthwise_matmul``
(recog/training/depthwise.py, applied by ``configure_step``) ran the PP-LCNet recipe at 2.73x
PaddleClas's images/s on the idle machine, the compiled step at 2.41x (from 0.92x to 1.62x in
earlier runs on a loaded machine), on ResNet50_vd about 0.94x dygraph; oneDNN slower still. So
``auto`` keeps the dygraph step (no translation time, no SOT risk); ``trainer.compile=true`` opts
in. Data-parallel runs stay in dygraph either way (``paddle.DataParallel`` reduces gradients
through hooks on the dygraph parameters, which this module does not claim to preserve).

Measured in Paddle 3.3.1, oneDNN in training also has a failure we could only work around: a
process whose first SOT translation of a layer runs with ``FLAGS_use_mkldnn`` on dies with
SIGSEGV (``_translate_without_onednn``); one run of a side-by-side benchmark also died so after
the workaround. It stays opt-in (``trainer.onednn=true``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from copy import deepcopy
from dataclasses import dataclass

import paddle

from recog.errors import ConfigError
from recog.losses._pairs import label_checks_enabled
from recog.training.depthwise import resolve_depthwise_matmul, use_depthwise_matmul
from recog.training.switches import parse_switch

log = logging.getLogger(__name__)

ONEDNN_FLAG = "FLAGS_use_mkldnn"
# PIR's layout pass: NCHW convolutions of a compiled program to NHWC (channels-last) where it
# pays (float16/bfloat16 on the GPU).
LAYOUT_FLAG = "FLAGS_enable_auto_layout_pass"
# trainer.onednn=true in the train stage (the mode stays for scripts/bench_train.py --with-onednn).
ONEDNN_TRAINING_REFUSED = (
    "trainer.onednn=true is not available for training: Paddle 3.3.1's oneDNN training programs leave the "
    "BatchNorm running statistics behind dygraph's (PP-LCNet after 4 steps: about a third of them, "
    "tests/training/test_compile.py), so the model would evaluate differently, and its step was no faster "
    "(0.94x dygraph). Leave it at auto; scripts/bench_train.py --with-onednn still measures it"
)
# The layers whose training forward updates state of their own (running statistics).
BATCH_NORMS = (paddle.nn.layer.norm._BatchNormBase, paddle.nn.BatchNorm)


@dataclass(frozen=True)
class StepMode:
    """How the training step runs: ``compile`` (to_static programs), ``onednn`` (oneDNN kernels in
    them, CPU), ``channels_last`` (PIR layout pass, GPU with mixed precision)."""

    compile: bool = False
    onednn: bool = False
    channels_last: bool = False

    def describe(self) -> str:
        if not self.compile:
            return "dygraph"
        if self.onednn:
            return "compiled backbone (oneDNN kernels), neck/head/loss in dygraph"
        return "compiled" + (" (channels-last)" if self.channels_last else "")


def resolve_step_mode(trainer_cfg, device: str, world_size: int = 1, amp: bool = False) -> StepMode:
    """The ``StepMode`` for ``trainer.compile`` / ``trainer.onednn`` / ``trainer.channels_last`` on
    ``device`` (``cpu`` or ``gpu``) with ``world_size`` processes."""
    compile_ = parse_switch(getattr(trainer_cfg, "compile", "auto"), "trainer.compile")
    onednn = parse_switch(getattr(trainer_cfg, "onednn", "auto"), "trainer.onednn")
    layout = parse_switch(getattr(trainer_cfg, "channels_last", "auto"), "trainer.channels_last")
    if onednn == "true" and device != "cpu":
        raise ConfigError("trainer.onednn=true selects oneDNN CPU kernels: use it with trainer.device=cpu")
    if onednn == "true" and compile_ == "false":
        raise ConfigError(
            "trainer.onednn=true needs trainer.compile=true|auto: Paddle 3.3 uses oneDNN kernels "
            "in training only inside compiled programs (dygraph ignores FLAGS_use_mkldnn)"
        )
    if layout == "true" and (device == "cpu" or not amp):
        raise ConfigError(
            "trainer.channels_last=true is for a GPU with trainer.amp set (PIR's layout pass "
            "rewrites float16/bfloat16 convolutions to NHWC); leave it at auto on the CPU"
        )
    # auto: dygraph, measured as fast (see the module docstring), unless a switch that needs programs is on.
    compiled = compile_ == "true" or (compile_ == "auto" and "true" in (onednn, layout))
    if compiled and world_size > 1:
        log.warning(
            "trainer.compile=true with %d processes: data-parallel training runs in dygraph "
            "(gradients are averaged by paddle.DataParallel's hooks on dygraph parameters)",
            world_size,
        )
        compiled = False
    return StepMode(
        compile=compiled,
        onednn=compiled and device == "cpu" and onednn == "true",
        channels_last=compiled and device != "cpu" and amp and layout != "false",
    )


def configure_step(runner, trainer_cfg, world_size: int = 1, amp: bool = False) -> StepMode:
    """Set ``runner``'s (a ``StepRunner``) step mode from ``trainer_cfg`` on the current device:
    its ``forward`` (the net, or a ``CompiledForward`` of it), its finite check
    (``trainer.fused_finite_check``) and its depthwise convolutions (``trainer.depthwise_matmul``).
    Returns the mode, for the log."""
    device = "cpu" if paddle.get_device() == "cpu" else "gpu"
    mode = resolve_step_mode(trainer_cfg, device, world_size, amp)
    runner.fused_finite_check = bool(getattr(trainer_cfg, "fused_finite_check", True))
    runner.forward = CompiledForward(runner.net, mode) if mode.compile else runner.net
    if resolve_depthwise_matmul(trainer_cfg, device):
        count = use_depthwise_matmul(runner.net)
        if count:
            log.info(
                "trainer.depthwise_matmul: %d depthwise convolutions run as a matrix product on small maps "
                "(in dygraph)",
                count,
            )
    return mode


def step_kernels(forward):
    """The context a step's forward and backward run in: ``forward.kernels()`` for a
    ``CompiledForward``, else nothing."""
    kernels = getattr(forward, "kernels", None)
    return kernels() if kernels is not None else contextlib.nullcontext()


@contextlib.contextmanager
def paddle_flags(flags: dict[str, bool]) -> Iterator[None]:
    """Paddle global flags set within the block, restored after it."""
    if not flags:
        yield
        return
    before = paddle.get_flags(list(flags))
    paddle.set_flags(flags)
    try:
        yield
    finally:
        paddle.set_flags(before)


class CompiledForward:
    """``net(images, labels)`` (a ``TrainNet``: losses dict) with a compiled program inside.

    Without oneDNN the whole net (model and loss) runs through ``paddle.jit.to_static``. With
    oneDNN only the backbone does (``net.model.backbone``, where the step spends its time), and
    the neck, head and loss stay in dygraph: measured in Paddle 3.3.1 on the PP-LCNet recipe, a
    whole-net program with oneDNN kernels computes the loss right (to 3e-7) but every one of the
    93 gradients wrong (relative error 0.03 for the ArcMargin weight, 0.9-4 for the others), while
    a backbone-only program's gradients match dygraph's (tests/training/test_compile.py).

    Calls with the label checks on (the first step) run in dygraph. If a compiled call fails (the
    first translation, or a re-translation SOT starts when one of its guards no longer holds), the
    BatchNorm statistics and random state it may have changed are restored, one warning names the
    sublayer that cannot be converted, the call is repeated in dygraph, and every later call runs
    in dygraph (a genuine error then surfaces from the dygraph call). ``kernels()`` is the context
    the step's forward *and* backward run in: Paddle picks
    a program's kernels when it first runs it, and the backward program first runs in
    ``loss.backward()``.
    """

    def __init__(self, net: paddle.nn.Layer, mode: StepMode):
        self.net = net
        self.mode = mode
        backbone = getattr(getattr(net, "model", None), "backbone", None)
        # What is compiled: the backbone (oneDNN) or the whole net.
        self.target = backbone if mode.onednn and backbone is not None else net
        # A bound method: the layer itself stays dygraph (to_static(layer) would convert it in place).
        self.static = paddle.jit.to_static(self.target.forward, full_graph=False)
        self.failed: str | None = None  # why compiled execution was given up
        self.compiled_calls = 0

    @property
    def active(self) -> bool:
        return self.failed is None

    @property
    def region(self) -> str:
        return "backbone" if self.target is not self.net else "model and loss"

    def kernels(self):
        flags = {}
        if self.active and self.mode.onednn:
            flags[ONEDNN_FLAG] = True
        if self.active and self.mode.channels_last:
            flags[LAYOUT_FLAG] = True
        return paddle_flags(flags)

    def __call__(self, images, labels):
        if not self.active or label_checks_enabled():
            return self.net(images, labels)
        # A later call may translate again (SOT re-traces when a guard fails) and fail then too.
        saved = _snapshot(self.net)
        try:
            if self.mode.onednn and not self.compiled_calls:
                self._translate_without_onednn(images, labels)
            losses = self._compiled(images, labels)
        except Exception as error:  # noqa: BLE001 - any conversion failure falls back to dygraph
            _restore(self.net, saved)
            culprit = find_unconvertible_layer(self.net, (images, labels), root=self.target)
            _restore(self.net, saved)
            self.failed = f"{culprit}: {_last_line(error)}"
            log.warning(
                "trainer.compile: %s cannot be converted by paddle.jit.to_static; training in dygraph "
                "(set trainer.compile=false to skip the attempt)",
                self.failed,
            )
            return self.net(images, labels)
        self.compiled_calls += 1
        return losses

    def _compiled(self, images, labels):
        if self.target is self.net:
            return self.static(images, labels)
        self.target.forward = self.static  # the instance attribute shadows the class's forward
        try:
            return self.net(images, labels)
        finally:
            del self.target.forward

    def _translate_without_onednn(self, images, labels) -> None:
        """Trace a copy of the compiled layer once with oneDNN off, forward only. Measured in Paddle
        3.3.1: when the first SOT translation of the layer's code runs with ``FLAGS_use_mkldnn`` on,
        the process dies (SIGSEGV in ``egr::to_static::details::CreateTensorFromValue``, first call);
        after one translation with the flag off, a translation with it on works and selects oneDNN
        kernels. The copy leaves this layer's programs unbuilt, to be built with the flag on."""
        copy = deepcopy(self.target)
        rng = paddle.get_rng_state()
        args = (images, labels) if self.target is self.net else (images,)
        with paddle_flags({ONEDNN_FLAG: False}):
            paddle.jit.to_static(copy.forward, full_graph=False)(*args)
        paddle.set_rng_state(rng)
        del copy


def find_unconvertible_layer(
    net: paddle.nn.Layer, inputs: tuple, root: paddle.nn.Layer | None = None, max_depth: int = 4
) -> str:
    """The deepest sublayer of ``root`` (default ``net``; ``name (Class)``) whose forward fails
    under to_static on the inputs that ``net(*inputs)`` in dygraph gives it, while its own
    sublayers convert; ``root`` itself if no single sublayer is to blame. Runs ``net`` and the
    probes in train mode: the caller restores BatchNorm statistics and random state."""
    root = net if root is None else root
    prefix = next((name for name, layer in net.named_sublayers() if layer is root), "")
    recorded: dict[int, tuple] = {}
    hooks = [layer.register_forward_pre_hook(_recorder(recorded, id(layer))) for _, layer in net.named_sublayers()]
    try:
        with contextlib.suppress(Exception):
            net(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    name, layer = prefix, root
    for _ in range(max_depth):
        failing = None
        for child_name, child in layer.named_children():
            args = recorded.get(id(child))
            if args is not None and not _converts(child, args):
                failing = (f"{name}.{child_name}" if name else child_name, child)
                break
        if failing is None:
            break
        name, layer = failing
    return f"{name or 'the training net'} ({type(layer).__name__})"


def _converts(layer: paddle.nn.Layer, args: tuple) -> bool:
    try:
        paddle.jit.to_static(layer.forward, full_graph=False)(*args)
        return True
    except Exception:  # noqa: BLE001 - a probe: any failure marks the layer
        return False


def _recorder(recorded: dict[int, tuple], key: int) -> Callable:
    def hook(layer, args):
        recorded.setdefault(key, tuple(args))

    return hook


def _snapshot(net: paddle.nn.Layer) -> tuple[list[tuple[paddle.Tensor, paddle.Tensor]], object]:
    """Copies of what a failed forward may change: the BatchNorm running statistics (non-trainable
    parameters in Paddle, not buffers), the buffers, and the random state."""
    states = [b for b in net.buffers() if b is not None]
    for layer in net.sublayers(include_self=True):
        if isinstance(layer, BATCH_NORMS):
            states += [layer._mean, layer._variance]
    return [(state, state.clone()) for state in states], paddle.get_rng_state()


def _restore(net: paddle.nn.Layer, saved) -> None:
    buffers, rng = saved
    for buffer, copy in buffers:
        buffer.set_value(copy)
    paddle.set_rng_state(rng)


def _last_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"[:300]
