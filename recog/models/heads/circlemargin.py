"""CircleMargin head: Circle loss with class-level labels (Sun et al. 2020, arXiv:2002.10857)."""

import paddle
import paddle.nn.functional as F

from recog.models.heads.cosine import CosineHead


class CircleMargin(CosineHead):
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
        super().__init__(embedding_size, class_num, margin, scale)

    def margin_logits(self, cos: paddle.Tensor, one_hot: paddle.Tensor) -> paddle.Tensor:
        constant = cos.detach()
        alpha_p = F.relu(1.0 + self.margin - constant)
        alpha_n = F.relu(constant + self.margin)
        target = alpha_p * (cos - (1.0 - self.margin))
        other = alpha_n * (cos - self.margin)
        return self.scale * (one_hot * target + (1.0 - one_hot) * other)
