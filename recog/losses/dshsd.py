"""Pairwise part of the DSHSD hashing loss (Deep Supervised Hashing with Similarity
Distributions / "based on Stable Distribution", IEEE Access 2019), as PaddleClas ``DSHSDLoss``."""

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from recog.losses._pairs import flat_labels, same_class


class DSHSDLoss(nn.Layer):
    """``loss = alpha * mean_ij [ (1 - s_ij) / 2 * d_ij + s_ij / 2 * relu(2K - d_ij) ]``.

    ``d_ij = |u_i - u_j|^2`` over the K-bit real-valued codes, ``s_ij = 1`` for pairs that share
    no class (dissimilar) and 0 otherwise; the mean runs over all N^2 pairs, the diagonal
    included. Similar codes are pulled together, dissimilar ones pushed at least ``2K`` apart
    (squared), the largest squared distance of two tanh codes being ``4K``.

    PaddleClas's ``DSHSDLoss`` reads ``features`` and ``logits`` and adds a classification
    term: softmax cross entropy on the logits (or, with ``multi_label``, sigmoid cross entropy
    summed over classes). This loss reads ``features`` [N, K] only; for PaddleClas's objective
    add a ``CELoss`` term (no smoothing, weight 1) on ``logits`` next to it (single-label case).

    Args:
        alpha: weight of this pairwise term (PaddleClas DSHSD config: 0.05).
        multi_label: labels are multi-hot [N, C] (0/1) instead of class ids [N] / [N, 1]; two
            samples are similar when they share a class.
    """

    def __init__(self, alpha: float = 0.05, multi_label: bool = False):
        super().__init__()
        self.alpha = float(alpha)
        self.multi_label = bool(multi_label)

    def forward(self, inputs: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
        """inputs: features [N, K] float32; labels: class ids [N] or [N, 1] int, or with
        ``multi_label`` multi-hot [N, C]. Returns a scalar."""
        n, bits = inputs.shape
        if self.multi_label:
            if labels.ndim != 2 or labels.shape[0] != n:
                raise ValueError(f"DSHSDLoss(multi_label=True) needs multi-hot labels [{n}, C], got {labels.shape}")
            multi_hot = labels.astype(inputs.dtype)
            dissimilar = (paddle.matmul(multi_hot, multi_hot, transpose_y=True) == 0).astype(inputs.dtype)
        else:
            dissimilar = (~same_class(flat_labels(labels, n, "DSHSDLoss"))).astype(inputs.dtype)

        sq_norm = (inputs * inputs).sum(axis=1, keepdim=True)  # [N, 1]
        dist = sq_norm + sq_norm.t() - 2.0 * paddle.matmul(inputs, inputs, transpose_y=True)
        dist = paddle.clip(dist, min=0.0)  # [N, N] squared distances
        pair = (1.0 - dissimilar) / 2.0 * dist + dissimilar / 2.0 * F.relu(2.0 * bits - dist)
        return self.alpha * pair.mean()
