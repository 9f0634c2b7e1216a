"""``trainer.compile=true``: the training step's forward + loss as compiled programs (``CompiledForward``).

The ``TrainNet`` (model and loss) runs through ``paddle.jit.to_static`` (SOT: Python bytecode
traced into PIR programs; what it cannot trace becomes a graph break and runs in Python), and the
backward as the programs' gradient programs. The optimizer update stays eager: Paddle 3.3 cannot
put a dygraph optimizer's update into a to_static program. The first step runs in dygraph (the
losses' label checks read tensors back to the host; see ``recog.losses._pairs.label_checks``),
every later step through the program. A net that cannot be converted trains in dygraph after one
warning naming the sublayer that failed. Chosen by ``recog.training.strategy`` (off by default:
measured no faster than the dygraph step with ``trainer.depthwise_matmul``); data-parallel runs
stay in dygraph (``paddle.DataParallel`` reduces gradients through hooks on the dygraph parameters).

Training uses Paddle's native kernels only: in Paddle 3.3.1, programs with oneDNN kernels computed
wrong gradients (the whole net compiled) or left the BatchNorm running statistics behind dygraph's
(the backbone alone), and were no faster than dygraph (README, Training throughput).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import paddle

from recog.losses._pairs import label_checks_enabled

log = logging.getLogger(__name__)

# PIR's layout pass: NCHW convolutions of a compiled program to NHWC (channels-last) where it
# pays (float16/bfloat16 on the GPU).
LAYOUT_FLAG = "FLAGS_enable_auto_layout_pass"
# The layers whose training forward updates state of their own (running statistics).
BATCH_NORMS = (paddle.nn.layer.norm._BatchNormBase, paddle.nn.BatchNorm)


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
    """``net(images, labels)`` (a ``TrainNet``: losses dict) through a ``paddle.jit.to_static`` program.

    Calls with the label checks on (the first step) run in dygraph. If a compiled call fails (the
    first translation, or a re-translation SOT starts when one of its guards no longer holds), the
    BatchNorm statistics and random state it may have changed are restored, one warning names the
    sublayer that cannot be converted, the call is repeated in dygraph, and every later call runs
    in dygraph (a genuine error then surfaces from the dygraph call). ``kernels()`` is the context
    the step's forward *and* backward run in (``channels_last``: PIR's layout pass): Paddle picks a
    program's kernels when it first runs it, and the backward program first runs in ``loss.backward()``.
    """

    def __init__(self, net: paddle.nn.Layer, channels_last: bool = False):
        self.net = net
        self.channels_last = channels_last
        # A bound method: the layer itself stays dygraph (to_static(layer) would convert it in place).
        self.static = paddle.jit.to_static(net.forward, full_graph=False)
        self.failed: str | None = None  # why compiled execution was given up
        self.compiled_calls = 0

    @property
    def active(self) -> bool:
        return self.failed is None

    def kernels(self):
        return paddle_flags({LAYOUT_FLAG: True} if self.active and self.channels_last else {})

    def __call__(self, images, labels):
        if not self.active or label_checks_enabled():
            return self.net(images, labels)
        # A later call may translate again (SOT re-traces when a guard fails) and fail then too.
        saved = _snapshot(self.net)
        try:
            losses = self.static(images, labels)
        except Exception as error:  # noqa: BLE001 - any conversion failure falls back to dygraph
            _restore(self.net, saved)
            culprit = find_unconvertible_layer(self.net, (images, labels))
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
