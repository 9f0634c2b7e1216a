"""Triplet angular margin loss (PaddleClas's ``TripletAngularMarginLoss``, used by PP-ShiTuV2)."""

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from recog.losses._pairs import check_pk_batch, l2_normalize, pair_masks, same_class


class TripletAngularMarginLoss(nn.Layer):
    """Batch-hard triplet loss on cosine similarities, with optional absolute bounds.

    ``sim = x x^T`` (cosines when ``normalize_feature``); per anchor i the hardest positive
    ``s_ap_i = min_{y_j = y_i} sim(i, j)`` (the anchor itself included, as in PaddleClas: with
    normalised features it never is the minimum unless all positives are identical) and the hardest
    negative ``s_an_i = max_{y_k != y_i} sim(i, k)``.
    ``loss = mean_i relu(s_an_i - s_ap_i + margin)``; with ``add_absolute``, plus
    ``absolute_loss_weight * (mean_i relu(ap_value - s_ap_i) + mean_i an_term_i)`` where
    ``an_term_i = s_an_i - an_value`` if positive, else 1.

    That ``else 1`` is PaddleClas's (it fills the inactive hinge with ones where ``relu`` would give
    0): kept so that the reported value equals PaddleClas's; the constant adds nothing to the
    gradient, which is exactly that of ``relu(s_an_i - an_value)``.

    PaddleClas reshapes the masked similarities per row, so it needs the same number of positives
    per anchor; here the labels decide, so any P x K batch works (each anchor needs a positive
    other than itself and a negative).

    Args:
        margin: hinge margin between the hardest negative's and positive's cosines.
        normalize_feature: L2-normalise the features first (else raw inner products).
        add_absolute: add the absolute terms pulling ``s_ap`` above ``ap_value`` and ``s_an``
            below ``an_value``.
        absolute_loss_weight: their weight.
        ap_value, an_value: the absolute bounds.
    """

    def __init__(
        self,
        margin: float = 0.5,
        normalize_feature: bool = True,
        add_absolute: bool = False,
        absolute_loss_weight: float = 1.0,
        ap_value: float = 0.9,
        an_value: float = 0.5,
    ):
        super().__init__()
        self.margin = margin
        self.normalize_feature = normalize_feature
        self.add_absolute = add_absolute
        self.absolute_loss_weight = absolute_loss_weight
        self.ap_value, self.an_value = ap_value, an_value

    def forward(self, inputs: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
        """inputs: features [N, D] float32; labels: [N] or [N, 1] int. Returns a scalar."""
        labels, is_pos, is_neg = pair_masks(inputs, labels, "TripletAngularMarginLoss")
        check_pk_batch(is_pos, is_neg, labels, "TripletAngularMarginLoss")
        x = l2_normalize(inputs) if self.normalize_feature else inputs
        sim = paddle.matmul(x, x, transpose_y=True)  # [N, N]
        inf = paddle.full_like(sim, float("inf"))
        sim_ap = paddle.where(same_class(labels), sim, inf).min(axis=1)  # anchor included, as PaddleClas
        sim_an = paddle.where(is_neg, sim, -inf).max(axis=1)
        loss = F.relu(sim_an - sim_ap + self.margin).mean()
        if self.add_absolute:
            ap_term = F.relu(self.ap_value - sim_ap)
            an_excess = sim_an - self.an_value
            an_term = paddle.where(an_excess > 0, an_excess, paddle.ones_like(an_excess))
            loss = loss + self.absolute_loss_weight * (ap_term.mean() + an_term.mean())
        return loss
