"""TriHard loss: batch-hard triplet loss on squared distances of L2-normalised features."""

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from recog.losses._pairs import check_pk_batch, hardest_pairs, l2_normalize, pair_masks, squared_distances


class TriHardLoss(nn.Layer):
    """PaddleClas ``TriHardLoss``, with positives and negatives taken from the labels.

    Features are L2-normalised (``x / |x|_2``), ``s(i, j) = |x_i - x_j|^2`` (squared, in [0, 4]);
    for each anchor i: ``hard_pos_i = max_{j != i, y_j = y_i} s(i, j)``,
    ``hard_neg_i = min_{y_k != y_i} s(i, k)``; ``loss = mean_i relu(hard_pos_i + margin - hard_neg_i)``.

    PaddleClas reads the classes from the batch order (blocks of ``samples_each_class``
    consecutive samples, fixed ``batch_size``); here the labels decide, so any P x K batch in any
    order works, and on an ordered P x K batch the value is the same.
    The batch must be P x K: every anchor needs a positive and a negative.

    Args:
        margin: hinge margin, on squared distances of unit vectors.
    """

    def __init__(self, margin: float = 0.1):
        super().__init__()
        self.margin = margin

    def forward(self, inputs: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
        """inputs: features [N, D] float32; labels: [N] or [N, 1] int. Returns a scalar."""
        labels, is_pos, is_neg = pair_masks(inputs, labels, "TriHardLoss")
        check_pk_batch(is_pos, is_neg, labels, "TriHardLoss")
        hard_pos, hard_neg = hardest_pairs(squared_distances(l2_normalize(inputs)), is_pos, is_neg)  # [N], [N]
        return F.relu(hard_pos + self.margin - hard_neg).mean()
