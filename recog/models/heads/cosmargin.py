"""CosMargin head: large margin cosine loss (CosFace, Wang et al. 2018, arXiv:1801.09414)."""

from typing import Optional

import paddle
import paddle.nn.functional as F
from paddle import nn


class CosMargin(nn.Layer):
    """``features [N, embedding_size] -> logits [N, class_num]``.

    In training with labels the target logit is ``scale * (cos(theta) - margin)``, the others
    ``scale * cos(theta)``, where ``cos(theta)`` is the cosine between the feature and the class
    centre (a column of ``weight``). Without labels or in eval mode the plain cosine is returned
    (no scale, no margin). The parameter is ``weight [embedding_size, class_num]``, as in
    PaddleClas's ``CosMargin``, so its weights load by name.
    """

    def __init__(self, embedding_size: int, class_num: int, margin: float = 0.15, scale: float = 64.0):
        super().__init__()
        self.embedding_size, self.class_num = embedding_size, class_num
        self.margin, self.scale = margin, scale
        self.weight = self.create_parameter(
            [embedding_size, class_num], default_initializer=nn.initializer.XavierNormal()
        )

    def forward(self, features: paddle.Tensor, labels: Optional[paddle.Tensor] = None) -> paddle.Tensor:
        cos = paddle.matmul(F.normalize(features, axis=1), F.normalize(self.weight, axis=0))
        if labels is None or not self.training:
            return cos
        one_hot = F.one_hot(labels.reshape([-1]).astype("int64"), cos.shape[1])
        return self.scale * (cos - self.margin * one_hot)
