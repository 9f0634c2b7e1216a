"""How the training step runs: one ``StepStrategy`` per run, chosen once from the ``trainer`` config
(``configure_step``) and asked by ``StepRunner`` and the ``Trainer`` at three points of a step:

- ``forward``: what computes the losses, the ``TrainNet`` itself (dygraph) or a ``CompiledForward``
  of it (``trainer.compile``, recog/training/compile.py);
- ``kernels()``: the context the forward and backward run in (Paddle flags of compiled programs);
- ``all_finite``: the NaN / Inf check of the loss and gradients, one fused kernel per dtype
  (``trainer.fused_finite_check``, below) or one ``isfinite`` per tensor;
- ``batches(loader)``: the loader's batches beside their device copies, the next one's copy in
  flight during the step on a GPU (recog/training/prefetch.py).

``trainer.depthwise_matmul`` changes the model's depthwise convolutions when the strategy is
chosen (recog/training/depthwise.py) and is then part of the net's own forward.

The defaults (``auto``) are the dygraph step with depthwise convolutions as a matrix product on
the CPU: ``scripts/bench_train.py --against paddleclas`` measured it fastest among the modes that
train the same weights as Paddle's own kernels (README, Training throughput).
"""

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import paddle
from paddle import _legacy_C_ops

from recog.errors import ConfigError
from recog.training.compile import CompiledForward
from recog.training.depthwise import resolve_depthwise_matmul, use_depthwise_matmul
from recog.training.prefetch import prefetch_to_device
from recog.training.switches import parse_switch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepMode:
    """``compile``: forward + loss as ``paddle.jit.to_static`` programs; ``channels_last``: PIR's NHWC
    layout pass in them (GPU with mixed precision)."""

    compile: bool = False
    channels_last: bool = False

    def describe(self) -> str:
        return "compiled" + (" (channels-last)" if self.channels_last else "") if self.compile else "dygraph"


def resolve_step_mode(trainer_cfg, device: str, world_size: int = 1, amp: bool = False) -> StepMode:
    """The ``StepMode`` for ``trainer.compile`` / ``trainer.channels_last`` on ``device`` (``cpu`` or
    ``gpu``) with ``world_size`` processes. ``auto``: dygraph, unless channels-last asks for programs."""
    compile_ = parse_switch(getattr(trainer_cfg, "compile", "auto"), "trainer.compile")
    layout = parse_switch(getattr(trainer_cfg, "channels_last", "auto"), "trainer.channels_last")
    if layout == "true" and (device == "cpu" or not amp):
        raise ConfigError(
            "trainer.channels_last=true is for a GPU with trainer.amp set (PIR's layout pass "
            "rewrites float16/bfloat16 convolutions to NHWC); leave it at auto on the CPU"
        )
    compiled = compile_ == "true" or (compile_ == "auto" and layout == "true")
    if compiled and world_size > 1:
        log.warning(
            "trainer.compile=true with %d processes: data-parallel training runs in dygraph "
            "(gradients are averaged by paddle.DataParallel's hooks on dygraph parameters)",
            world_size,
        )
        compiled = False
    return StepMode(compile=compiled, channels_last=compiled and device != "cpu" and amp and layout != "false")


class StepStrategy:
    """The step of ``net`` (a ``TrainNet``) in ``mode``; the plain dygraph step by default."""

    def __init__(self, net: paddle.nn.Layer, mode: StepMode = StepMode(), fused_finite_check: bool = True):
        self.mode = mode
        self.forward = CompiledForward(net, channels_last=mode.channels_last) if mode.compile else net
        self.all_finite = all_finite if fused_finite_check else all_finite_per_tensor

    def kernels(self):
        return self.forward.kernels() if self.mode.compile else contextlib.nullcontext()

    def batches(self, loader):
        return prefetch_to_device(loader)

    def describe(self) -> str:
        return f"{self.mode.describe()} step"


def configure_step(runner, trainer_cfg, world_size: int = 1, amp: bool = False) -> StepStrategy:
    """Choose ``runner``'s (a ``StepRunner``) strategy from ``trainer_cfg`` on the current device, set
    it and return it; with ``trainer.depthwise_matmul`` the net's depthwise convolutions are changed."""
    device = "cpu" if paddle.get_device() == "cpu" else "gpu"
    mode = resolve_step_mode(trainer_cfg, device, world_size, amp)
    if resolve_depthwise_matmul(trainer_cfg, device):
        count = use_depthwise_matmul(runner.net)
        if count:
            log.info(
                "trainer.depthwise_matmul: %d depthwise convolutions run as a matrix product on small maps "
                "(in dygraph)",
                count,
            )
    fused = bool(getattr(trainer_cfg, "fused_finite_check", True))
    runner.strategy = StepStrategy(runner.net, mode, fused_finite_check=fused)
    return runner.strategy


# ---- the finite check -----------------------------------------------------------------------------
# ``all_finite`` replaces one ``isfinite(...).all()`` per parameter plus a ``stack`` (2 x P + 2 kernels
# for P parameters) by Paddle's ``check_finite_and_unscale`` op, which scans a whole list of tensors at
# once and rewrites them in place: when all are finite it divides them by a scale, here 1.0, which
# leaves every value bit-identical (``x / 1.0 == x``); when one is not, it multiplies them by 0, so
# finite entries become 0 and NaN / Inf entries NaN. The step is then not applied (``StepRunner``
# raises or skips it and clears the gradients), and which parameters had a non-finite gradient can
# still be read (``StepRunner.describe_nonfinite``).


def all_finite(loss: paddle.Tensor, grads: Sequence[paddle.Tensor]) -> paddle.Tensor:
    """``[]`` bool tensor on the loss's device: ``loss`` and every tensor of ``grads`` hold only
    finite values. ``grads`` may mix dtypes (float32 master gradients beside bfloat16 ones)."""
    finite = paddle.isfinite(loss.astype("float32"))
    for dtype, group in _by_dtype(grads).items():
        found_inf = paddle.zeros([1], dtype="bool")
        # The scale's type: float64 for float64 tensors, float32 for float32 / float16 / bfloat16.
        one = paddle.ones([1], dtype="float64" if "float64" in dtype else "float32")
        _legacy_C_ops.check_finite_and_unscale(group, one, group, found_inf)
        finite = finite & ~found_inf.reshape([])
    return finite


def all_finite_per_tensor(loss: paddle.Tensor, grads: Sequence[paddle.Tensor]) -> paddle.Tensor:
    """The same answer, one ``isfinite`` per tensor (the unfused reference, for tests and benchmarks)."""
    finite = paddle.isfinite(loss.astype("float32"))
    if grads:
        finite = finite & paddle.stack([paddle.isfinite(g).all() for g in grads]).all()
    return finite


def _by_dtype(tensors: Sequence[paddle.Tensor]) -> dict[str, list[paddle.Tensor]]:
    groups: dict[str, list[paddle.Tensor]] = {}
    for tensor in tensors:
        groups.setdefault(str(tensor.dtype), []).append(tensor)
    return groups
