"""CircleMargin head: Circle loss with class-level labels (Sun et al. 2020, arXiv:2002.10857)."""

from typing import Optional

import paddle
import paddle.nn.functional as F
from paddle import nn


class CircleMargin(nn.Layer):
    """``features [N, embedding_size] -> logits [N, class_num]``; softmax cross-entropy on these
    logits is the Circle loss with one positive (the target class) per sample.

    With ``s = cos(theta)`` the cosine to each class centre (a column of ``weight``), in training
    with labels:

    - target: ``scale * alpha_p * (s - delta_p)``, ``alpha_p = relu(1 + margin - s)``,
      ``delta_p = 1 - margin``;
    - others: ``scale * alpha_n * (s - delta_n)``, ``alpha_n = relu(s + margin)``,
      ``delta_n = margin``.

    The weights ``alpha_p`` and ``alpha_n`` are constants for back-propagation (computed from a
    detached cosine), as in the paper and PaddleClas's ``CircleMargin``: the gradient w.r.t. ``s``
    is ``scale * alpha``. Without labels or in eval mode the plain cosine is returned. The
    parameter is ``weight [embedding_size, class_num]``, named as in PaddleClas.
    """

    def __init__(self, embedding_size: int, class_num: int, margin: float = 0.25, scale: float = 256.0):
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
        constant = cos.detach()
        alpha_p = F.relu(1.0 + self.margin - constant)
        alpha_n = F.relu(constant + self.margin)
        target = alpha_p * (cos - (1.0 - self.margin))
        other = alpha_n * (cos - self.margin)
        one_hot = F.one_hot(labels.reshape([-1]).astype("int64"), cos.shape[1])
        return self.scale * (one_hot * target + (1.0 - one_hot) * other)
