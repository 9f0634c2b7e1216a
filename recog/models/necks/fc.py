"""FC neck: a linear projection to the embedding."""

import paddle
from paddle import nn


class FCNeck(nn.Layer):
    """``[N, in_channels] -> [N, embedding_size]`` (parameters ``fc.weight``, ``fc.bias``)."""

    def __init__(self, in_channels: int, embedding_size: int = 512):
        super().__init__()
        self.embedding_size = embedding_size
        self.fc = nn.Linear(in_channels, embedding_size)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.fc(x)
