"""ArcMargin head: additive angular margin (ArcFace, Deng et al. 2019)."""

import math
from typing import Optional

import paddle
import paddle.nn.functional as F
from paddle import nn


class ArcMargin(nn.Layer):
    """``features [N, embedding_size] -> logits [N, class_num]``.

    In training with labels the target logit is ``scale * cos(theta + margin)``, the others
    ``scale * cos(theta)``. Without labels or in eval mode the plain cosine ``cos(theta)`` is
    returned (no scale), as a similarity to each class centre. Without ``easy_margin``, where
    ``theta + margin`` would pass pi the target logit becomes ``cos(theta) - margin * sin(margin)``
    so that it keeps decreasing in theta; with ``easy_margin`` the margin only applies where
    ``cos(theta) > 0``.
    """

    def __init__(
        self,
        embedding_size: int,
        class_num: int,
        margin: float = 0.2,
        scale: float = 30.0,
        easy_margin: bool = False,
    ):
        super().__init__()
        self.margin, self.scale, self.easy_margin = margin, scale, easy_margin
        self.weight = self.create_parameter(
            [embedding_size, class_num], default_initializer=nn.initializer.XavierNormal()
        )

    def forward(self, features: paddle.Tensor, labels: Optional[paddle.Tensor] = None) -> paddle.Tensor:
        cos = paddle.matmul(F.normalize(features, axis=1), F.normalize(self.weight, axis=0))
        if labels is None or not self.training:
            return cos
        # The floor keeps d sqrt/d cos finite where cos = +-1 exactly (NaN gradients otherwise).
        sin = paddle.sqrt(paddle.clip(1.0 - cos * cos, min=1e-12))
        cos_margin = cos * math.cos(self.margin) - sin * math.sin(self.margin)
        if self.easy_margin:
            cos_margin = paddle.where(cos > 0, cos_margin, cos)
        else:
            threshold = math.cos(math.pi - self.margin)
            cos_margin = paddle.where(cos > threshold, cos_margin, cos - math.sin(math.pi - self.margin) * self.margin)
        one_hot = F.one_hot(labels.reshape([-1]).astype("int64"), cos.shape[1])
        return self.scale * (one_hot * cos_margin + (1.0 - one_hot) * cos)
