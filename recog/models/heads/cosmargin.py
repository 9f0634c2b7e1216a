"""CosMargin head: large margin cosine loss (CosFace, Wang et al. 2018, arXiv:1801.09414)."""

import paddle

from recog.models.heads.cosine import CosineHead


class CosMargin(CosineHead):
    """``features [N, embedding_size] -> logits [N, class_num]``.

    In training with labels the target logit is ``scale * (cos(theta) - margin)``, the others
    ``scale * cos(theta)``, where ``cos(theta)`` is the cosine between the feature and the class
    centre (a column of ``weight``). Without labels or in eval mode the plain cosine is returned
    (no scale, no margin). The parameter is ``weight [embedding_size, class_num]``, as in
    PaddleClas's ``CosMargin``, so its weights load by name.
    """

    def __init__(self, embedding_size: int, class_num: int, margin: float = 0.15, scale: float = 64.0):
        super().__init__(embedding_size, class_num, margin, scale)

    def margin_logits(self, cos: paddle.Tensor, one_hot: paddle.Tensor) -> paddle.Tensor:
        return self.scale * (cos - self.margin * one_hot)
