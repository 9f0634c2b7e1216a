"""Ensemble metric learning loss, as PaddleClas ``EmlLoss`` (after Huang et al. 2012,
"Large Scale Strongly Supervised Ensemble Metric Learning")."""

import math

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from recog.losses._pairs import check_pk_batch, flat_labels, in_batch_masks


class EmlLoss(nn.Layer):
    """Smooth "hardest positive vs hardest negative" loss on squared Euclidean distances.

    With ``d_ij = |x_i - x_j|^2`` (raw features, no normalisation), for each anchor i:
    ``z_i = log mean_{p} exp(d_ip) + log mean_{n} exp(-d_in)`` over its positives p (same class,
    p != i) and negatives n, and ``loss_i = log(1 + beta * exp(z_i)) / log(1 + beta)``;
    the result is ``mean_i loss_i``. ``exp(z_i)`` is PaddleClas's ``theta * exp(bias)``, with
    ``bias = max_p d_ip - min_n d_in``: a soft version of the batch-hard triplet gap.

    PaddleClas takes positives and negatives from the batch order (``batch_size``,
    ``samples_each_class``); here they come from the labels, so any order and uneven class
    counts work, and on a P x K batch ordered class by class the value is PaddleClas's. Its
    piecewise "stable surrogate" (threshold 20 on ``bias``) is replaced by ``softplus``, which
    computes the same function stably (the two differ by < 1e-9 relative).

    Reads ``features`` [N, D]. The batch must be P x K (every anchor needs a positive and a
    negative).

    Args:
        beta: sharpness of the surrogate (PaddleClas fixes it at 100000).
    """

    def __init__(self, beta: float = 100000.0):
        super().__init__()
        if beta <= 0:
            raise ValueError(f"EmlLoss beta must be positive, got {beta}")
        self.beta = float(beta)

    def forward(self, inputs: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
        """inputs: features [N, D] float32; labels: [N] or [N, 1] int. Returns a scalar."""
        labels = flat_labels(labels, inputs.shape[0], "EmlLoss")
        is_pos, is_neg = in_batch_masks(labels)
        check_pk_batch(is_pos, is_neg, labels, "EmlLoss")

        sq_norm = (inputs * inputs).sum(axis=1, keepdim=True)  # [N, 1]
        dist = sq_norm + sq_norm.t() - 2.0 * paddle.matmul(inputs, inputs, transpose_y=True)
        dist = paddle.clip(dist, min=0.0)  # [N, N] squared distances

        z = _log_mean_exp(dist, is_pos) + _log_mean_exp(-dist, is_neg)  # [N]
        return (F.softplus(z + math.log(self.beta)) / math.log1p(self.beta)).mean()


def _log_mean_exp(values: paddle.Tensor, mask: paddle.Tensor) -> paddle.Tensor:
    """Row-wise ``log(mean_{j: mask_ij} exp(values_ij))`` ([N, N] -> [N]); every row needs a True."""
    masked = paddle.where(mask, values, paddle.full_like(values, float("-inf")))
    count = mask.astype(values.dtype).sum(axis=1)
    return paddle.logsumexp(masked, axis=1) - paddle.log(count)
