"""ArcMargin head: additive angular margin (ArcFace, Deng et al. 2019)."""

import math

import paddle

from recog.models.heads.cosine import CosineHead


class ArcMargin(CosineHead):
    """``features [N, embedding_size] -> logits [N, class_num]``.

    In training with labels the target logit is ``scale * cos(theta + margin)``, the others
    ``scale * cos(theta)``. Without labels or in eval mode the plain cosine ``cos(theta)`` is
    returned (no scale), as a similarity to each class centre. Without ``easy_margin``, where
    ``theta + margin`` would pass pi the target logit becomes ``cos(theta) - margin * sin(margin)``
    so that it keeps decreasing in theta; with ``easy_margin`` the margin only applies where
    ``cos(theta) > 0``.
    """

    def __init__(
        self, embedding_size: int, class_num: int, margin: float = 0.2, scale: float = 30.0, easy_margin: bool = False
    ):
        super().__init__(embedding_size, class_num, margin, scale)
        self.easy_margin = easy_margin

    def margin_logits(self, cos: paddle.Tensor, one_hot: paddle.Tensor) -> paddle.Tensor:
        # 1e-12, not 0: at cos = +-1 the sqrt's gradient would be infinite (NaN after the chain rule).
        sin = paddle.sqrt(paddle.clip(1.0 - cos * cos, min=1e-12))
        cos_margin = cos * math.cos(self.margin) - sin * math.sin(self.margin)
        if self.easy_margin:
            cos_margin = paddle.where(cos > 0, cos_margin, cos)
        else:
            threshold = math.cos(math.pi - self.margin)
            cos_margin = paddle.where(cos > threshold, cos_margin, cos - math.sin(math.pi - self.margin) * self.margin)
        return self.scale * (one_hot * cos_margin + (1.0 - one_hot) * cos)
