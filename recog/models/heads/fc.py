"""FC head: a plain linear classifier."""

from typing import Optional

import paddle
from paddle import nn


class FCHead(nn.Layer):
    """``features [N, embedding_size] -> logits [N, class_num]``; labels are ignored."""

    def __init__(self, embedding_size: int, class_num: int):
        super().__init__()
        self.fc = nn.Linear(embedding_size, class_num)

    def forward(self, features: paddle.Tensor, labels: Optional[paddle.Tensor] = None) -> paddle.Tensor:
        return self.fc(features)
