"""``trainer.depthwise_matmul``: depthwise convolutions on small maps as one batched matrix product.

On a small map a depthwise convolution (``groups == channels``) is, per channel ``c``, a linear
map from the ``H x W`` input cells to the ``Ho x Wo`` output cells: ``y[n, c] = M_c x[n, c]`` with
``M_c [Ho*Wo, H*W]`` holding, at (output o, input i), the weight of the kernel tap that links them
(0 where none does). ``M_c`` is gathered from the layer's own weight, so its gradient flows back
to that weight, and the batch goes through one ``matmul`` of ``[C, Ho*Wo, H*W] x [C, H*W, N]``.
It computes the function of Paddle's kernel (tests/training/test_depthwise.py): in float64 PP-LCNet
trains the same weights (3 Momentum steps: to 4e-13 of each tensor's change); in float32 one step's
gradients agree to 2e-5 of each tensor's largest, as close as Paddle's kernel is to the float64
gradients (2.3e-5). Over more float32 steps the two part, as any two roundings of the same training
do: the differences grow about tenfold per step until an activation crosses a kink (Hardswish at
+-3), after which that channel's updates differ visibly. On the CPU, where Paddle 3.3.1's depthwise kernel is slow on
small maps, forward + backward at batch 64 (``scripts/bench_depthwise.py``) went from 71 ms to 3.9
ms for PP-LCNet's 256 channels at 4 x 4 (5 x 5 kernel), 106 ms to 2.2 ms for 512 at 2 x 2, 37 ms to
11 ms for 128 at 8 x 8. Maps with ``H*W * Ho*Wo`` above ``MAX_CELLS`` (e.g. 16 x 16 at stride 1) keep
Paddle's kernel, which is faster there.

``auto`` (the default) turns it on for CPU training and off on GPUs (cuDNN's kernels are fast).
It changes no parameter or name: checkpoints, exports and PaddleClas weights are unaffected. Only
training steps use it, and always in dygraph: under ``trainer.compile`` (SOT programs) the routing
check is a graph break at each routed layer, and the product runs in dygraph between the program's
pieces. Evaluation (also the evals during training, so that their metrics equal ``stage=eval``'s
exactly) and programs traced whole (the eval predictor, an export) keep Paddle's kernel.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import paddle

from recog.training.switches import parse_switch

log = logging.getLogger(__name__)

MAX_CELLS = 16384  # H*W * Ho*Wo: e.g. 16 x 16 -> 8 x 8 (stride 2), 8 x 8 -> 8 x 8


@functools.lru_cache(maxsize=64)
def tap_index(height: int, width: int, kernel: int, stride: int, padding: int) -> tuple[np.ndarray, int, int]:
    """``(index [Ho*Wo, H*W] int64, Ho, Wo)``: the kernel tap ``ki * kernel + kj`` linking each output
    cell to each input cell, ``kernel * kernel`` (a zero tap) where none does."""
    out_h = (height + 2 * padding - kernel) // stride + 1
    out_w = (width + 2 * padding - kernel) // stride + 1
    index = np.full((out_h * out_w, height * width), kernel * kernel, np.int64)
    for oi in range(out_h):
        for oj in range(out_w):
            for ki in range(kernel):
                for kj in range(kernel):
                    i, j = oi * stride - padding + ki, oj * stride - padding + kj
                    if 0 <= i < height and 0 <= j < width:
                        index[oi * out_w + oj, i * width + j] = ki * kernel + kj
    return index, out_h, out_w


_INDEX_TENSORS: dict[tuple, paddle.Tensor] = {}


def _index_tensor(shape: tuple[int, int, int, int, int], place) -> paddle.Tensor:
    """``tap_index(*shape)``'s index flattened, as a tensor on ``place``: made once, not at every step."""
    key = (shape, str(place))
    if key not in _INDEX_TENSORS:
        _INDEX_TENSORS[key] = paddle.to_tensor(tap_index(*shape)[0].reshape(-1), place=place)
    return _INDEX_TENSORS[key]


def depthwise_matmul(x: paddle.Tensor, weight: paddle.Tensor, bias, stride: int, padding: int) -> paddle.Tensor:
    """Depthwise convolution of ``x [N, C, H, W]`` with ``weight [C, 1, k, k]`` (+ ``bias [C]``),
    square stride and symmetric zero padding: ``[N, C, Ho, Wo]``, as ``F.conv2d(..., groups=C)``."""
    n, channels, height, width = x.shape
    kernel = weight.shape[-1]
    _, out_h, out_w = tap_index(height, width, kernel, stride, padding)
    taps = paddle.concat(
        [weight.reshape([channels, kernel * kernel]), paddle.zeros([channels, 1], dtype=weight.dtype)], axis=1
    )
    maps = paddle.gather(taps, _index_tensor((height, width, kernel, stride, padding), x.place), axis=1)
    maps = maps.reshape([channels, out_h * out_w, height * width])
    cells = x.reshape([n, channels, height * width]).transpose([1, 2, 0])  # [C, H*W, N]
    out = paddle.matmul(maps, cells).transpose([2, 0, 1]).reshape([n, channels, out_h, out_w])
    return out if bias is None else out + bias.reshape([1, channels, 1, 1])


def _square(values) -> int:
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    return int(values[0]) if all(int(v) == int(values[0]) for v in values) else -1


def eligible(layer: paddle.nn.Layer) -> bool:
    """A ``paddle.nn.Conv2D`` that is depthwise (groups == in == out channels), NCHW, with a square
    kernel and stride, no dilation and symmetric explicit zero padding."""
    if type(layer) is not paddle.nn.Conv2D:
        return False
    padding = list(getattr(layer, "_updated_padding", [None]))
    return (
        layer._groups == layer._in_channels == layer._out_channels
        and layer._data_format == "NCHW"
        and layer._padding_mode == "zeros"
        and getattr(layer, "_padding_algorithm", "") == "EXPLICIT"
        and len(padding) == 2
        and padding[0] == padding[1]
        and _square(layer._kernel_size) > 0
        and _square(layer._stride) > 0
        and list(layer._dilation) == [1, 1]
    )


class DepthwiseMatmulConv2D(paddle.nn.Conv2D):
    """A ``paddle.nn.Conv2D`` (same parameters and names) whose dygraph forward takes
    ``depthwise_matmul`` on maps of up to ``MAX_CELLS`` (``H*W * Ho*Wo``) cells."""

    def forward(self, x):
        if _takes_matmul(self, x):
            return depthwise_matmul(x, self.weight, self.bias, _square(self._stride), int(self._updated_padding[0]))
        return paddle.nn.Conv2D.forward(self, x)


@paddle.jit.not_to_static
def _takes_matmul(layer: paddle.nn.Conv2D, x) -> bool:
    # Training steps only, in dygraph: evaluation (also during training) and programs traced whole (the eval
    # predictor, exports) keep Paddle's kernel, so eval features equal stage=eval's and an export's exactly.
    # Under SOT (trainer.compile) this not_to_static call is a graph break: the product runs in dygraph.
    if not layer.training or not paddle.in_dynamic_mode():
        return False
    _, _, height, width = x.shape
    kernel, stride, padding = _square(layer._kernel_size), _square(layer._stride), int(layer._updated_padding[0])
    out_cells = ((height + 2 * padding - kernel) // stride + 1) * ((width + 2 * padding - kernel) // stride + 1)
    return height * width * out_cells <= MAX_CELLS


def use_depthwise_matmul(model: paddle.nn.Layer) -> int:
    """Route the eligible depthwise convolutions of ``model`` through ``depthwise_matmul`` on small
    maps (Paddle's kernel on larger ones), by making them ``DepthwiseMatmulConv2D``: parameters,
    names and state dict are untouched. Returns how many layers."""
    count = 0
    for layer in model.sublayers(include_self=True):
        if eligible(layer):
            layer.__class__ = DepthwiseMatmulConv2D
            count += 1
    return count


def resolve_depthwise_matmul(trainer_cfg, device: str) -> bool:
    """``trainer.depthwise_matmul``: ``auto`` is on for the CPU, off on a GPU."""
    switch = parse_switch(getattr(trainer_cfg, "depthwise_matmul", "auto"), "trainer.depthwise_matmul")
    return switch == "true" or (switch == "auto" and device == "cpu")
