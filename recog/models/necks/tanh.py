"""Tanh neck for hashing: a linear projection squashed into (-1, 1)."""

import paddle
from paddle import nn


class TanhNeck(nn.Layer):
    """``[N, in_channels] -> [N, embedding_size]``, ``tanh(fc(x))``: relaxed binary codes.

    Each output is in (-1, 1); ``recog.metrics.binarize(codes, "sign")`` turns them into bits for
    Hamming retrieval. Parameters ``fc.weight [in_channels, embedding_size]`` and ``fc.bias``.
    """

    def __init__(self, in_channels: int, embedding_size: int = 48):
        super().__init__()
        self.embedding_size = embedding_size
        self.fc = nn.Linear(in_channels, embedding_size)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if x.ndim > 2:
            x = x.flatten(1)
        return paddle.tanh(self.fc(x))
