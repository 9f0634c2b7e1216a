"""Batch-hard triplet loss on raw features (Hermans et al. 2017), as PaddleClas ``TripletLoss``."""

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from recog.losses._pairs import check_pk_batch, hardest_pairs, pair_masks, squared_distances


class TripletLoss(nn.Layer):
    """Batch-hard triplet loss on Euclidean distances of the features as they are (no normalisation).

    For each anchor i: ``d_ap = max_{j != i, y_j = y_i} d(i, j)``, ``d_an = min_{y_k != y_i} d(i, k)``;
    ``loss = mean_i relu(d_ap - d_an + margin)``, with
    ``d(i, j) = sqrt(max(|x_i|^2 + |x_j|^2 - 2 x_i.x_j, 1e-12))``.

    Same as ``TripletLossV2(margin, normalize_feature=False)``: unlike V2 this variant never
    normalises, so ``margin`` is in the units of the raw features (default 1.0).
    The batch must be P x K: every anchor needs a positive and a negative.

    Args:
        margin: hinge margin.
    """

    def __init__(self, margin: float = 1.0):
        super().__init__()
        self.margin = margin

    def forward(self, inputs: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
        """inputs: features [N, D] float32; labels: [N] or [N, 1] int. Returns a scalar."""
        labels, is_pos, is_neg = pair_masks(inputs, labels, "TripletLoss")
        check_pk_batch(is_pos, is_neg, labels, "TripletLoss")
        dist = paddle.clip(squared_distances(inputs), min=1e-12).sqrt()  # [N, N]
        dist_ap, dist_an = hardest_pairs(dist, is_pos, is_neg)  # [N], [N]
        return F.relu(dist_ap - dist_an + self.margin).mean()
