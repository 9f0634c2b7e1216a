"""Batch-hard triplet loss (Hermans et al. 2017, "In Defense of the Triplet Loss")."""

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from recog.losses._pairs import check_pk_batch, hardest_pairs, pair_masks, squared_distances


class TripletLossV2(nn.Layer):
    """Batch-hard triplet loss, as PaddleClas ``TripletLossV2``.

    For each anchor i: ``d_ap = max_{j != i, y_j = y_i} d(i, j)`` (hardest positive),
    ``d_an = min_{y_k != y_i} d(i, k)`` (hardest negative);
    ``loss = mean_i relu(d_ap - d_an + margin)``.
    ``d(i, j) = sqrt(max(|x_i|^2 + |x_j|^2 - 2 x_i.x_j, 1e-12))``, and with ``normalize_feature``
    each feature is first divided by ``(|x|_2 + 1e-12)``.

    The batch must be P x K: every anchor needs a positive and a negative.

    Args:
        margin: hinge margin.
        normalize_feature: L2-normalise the features before computing distances.
    """

    def __init__(self, margin: float = 0.5, normalize_feature: bool = True):
        super().__init__()
        self.margin = margin
        self.normalize_feature = normalize_feature

    def forward(self, inputs: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
        """inputs: features [N, D] float32; labels: [N] or [N, 1] int. Returns a scalar."""
        labels, is_pos, is_neg = pair_masks(inputs, labels, "TripletLossV2")  # [N], [N, N], [N, N]
        check_pk_batch(is_pos, is_neg, labels, "TripletLossV2")

        features = inputs
        if self.normalize_feature:
            features = features / (paddle.norm(features, p=2, axis=-1, keepdim=True) + 1e-12)
        dist = paddle.clip(squared_distances(features), min=1e-12).sqrt()  # [N, N]
        dist_ap, dist_an = hardest_pairs(dist, is_pos, is_neg)  # [N], [N]
        return F.relu(dist_ap - dist_an + self.margin).mean()
