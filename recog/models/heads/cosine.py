"""The shared part of the margin heads: cosine similarity of features to learned class centres."""

import paddle
import paddle.nn.functional as F
from paddle import nn


class CosineHead(nn.Layer):
    """``features [N, embedding_size] -> logits [N, class_num]`` from ``cos = <f/|f|, w_c/|w_c|>``.

    The class centres are the columns of ``weight [embedding_size, class_num]`` (PaddleClas's name,
    so its weights load by name). Without labels or in eval mode the plain cosine is returned (no
    scale, no margin): a similarity to each class centre. In training with labels subclasses turn
    ``cos`` and the one-hot targets ``[N, class_num]`` into margin logits (``margin_logits``).
    """

    def __init__(self, embedding_size: int, class_num: int, margin: float, scale: float):
        super().__init__()
        self.embedding_size, self.class_num = embedding_size, class_num
        self.margin, self.scale = margin, scale
        self.weight = self.create_parameter(
            [embedding_size, class_num], default_initializer=nn.initializer.XavierNormal()
        )

    def forward(self, features: paddle.Tensor, labels: paddle.Tensor | None = None) -> paddle.Tensor:
        cos = paddle.matmul(F.normalize(features, axis=1), F.normalize(self.weight, axis=0))
        if labels is None or not self.training:
            return cos
        one_hot = F.one_hot(labels.reshape([-1]).astype("int64"), cos.shape[1])
        return self.margin_logits(cos, one_hot)

    def margin_logits(self, cos: paddle.Tensor, one_hot: paddle.Tensor) -> paddle.Tensor:
        raise NotImplementedError
