"""Whether a step's loss and gradients are all finite, in one kernel per dtype (no host sync).

``all_finite`` replaces one ``isfinite(...).all()`` per parameter plus a ``stack`` (2 x P + 2
kernels for P parameters) by Paddle's ``check_finite_and_unscale`` op, which scans a whole list of
tensors at once and rewrites them in place: when all are finite it divides them by a scale, here
1.0, which leaves every value bit-identical (``x / 1.0 == x``); when one is not, it multiplies
them by 0, so finite entries become 0 and NaN / Inf entries NaN. The step is then not applied
(``StepRunner`` raises or skips it and clears the gradients), and which parameters had a
non-finite gradient can still be read (``StepRunner.describe_nonfinite``).
"""

from collections.abc import Sequence

import paddle
from paddle import _legacy_C_ops


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
