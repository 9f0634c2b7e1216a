"""Margin sample mining loss (Xiao et al. 2017, "Margin Sample Mining Loss"), as PaddleClas ``MSMLoss``."""

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from recog.losses._pairs import check_pk_batch, hardest_pairs, l2_normalize, pair_masks, squared_distances


class MSMLoss(nn.Layer):
    """The hardest positive pair against the hardest negative pair of the whole batch.

    Features are L2-normalised (``x / |x|_2``), ``s(i, j) = |x_i - x_j|^2`` (squared, as PaddleClas;
    the paper uses plain Euclidean distances);
    ``loss = relu(max_{i != j, y_i = y_j} s(i, j) + margin - min_{y_i != y_j} s(i, j))``:
    one hinge for the batch, not a mean over anchors (unlike ``TriHardLoss``).

    PaddleClas reads the classes from the batch order (blocks of ``samples_each_class``
    consecutive samples); here the labels decide, and on an ordered P x K batch the value is the
    same. The batch must be P x K (every sample needs a positive and a negative).

    Args:
        margin: hinge margin, on squared distances of unit vectors.
    """

    def __init__(self, margin: float = 0.1):
        super().__init__()
        self.margin = margin

    def forward(self, inputs: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
        """inputs: features [N, D] float32; labels: [N] or [N, 1] int. Returns a scalar."""
        labels, is_pos, is_neg = pair_masks(inputs, labels, "MSMLoss")
        check_pk_batch(is_pos, is_neg, labels, "MSMLoss")
        hard_pos, hard_neg = hardest_pairs(squared_distances(l2_normalize(inputs)), is_pos, is_neg)
        return F.relu(hard_pos.max() + self.margin - hard_neg.min())  # the hardest pair of the batch
