"""FC head: a plain linear classifier."""

import paddle
from paddle import nn


class FCHead(nn.Layer):
    """``features [N, embedding_size] -> logits [N, class_num]``; labels are ignored.

    ``bias=False`` drops the bias; ``weight_std`` initialises the weight from ``N(0, weight_std)``
    instead of Xavier (PP-ShiTuV2's FC head: no bias, std 0.001).
    """

    def __init__(self, embedding_size: int, class_num: int, bias: bool = True, weight_std: float | None = None):
        super().__init__()
        weight_attr = (
            None if weight_std is None else paddle.ParamAttr(initializer=nn.initializer.Normal(0.0, weight_std))
        )
        self.fc = nn.Linear(embedding_size, class_num, weight_attr=weight_attr, bias_attr=None if bias else False)

    def forward(self, features: paddle.Tensor, labels: paddle.Tensor | None = None) -> paddle.Tensor:
        return self.fc(features)
