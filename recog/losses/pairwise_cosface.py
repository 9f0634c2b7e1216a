"""Pairwise CosFace loss: the pair-wise form of CosFace in Sun et al. 2020, "Circle Loss: A
Unified Perspective of Pair Similarity Optimization" (as PaddleClas ``PairwiseCosface``)."""

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from recog.losses._pairs import check_pk_batch, flat_labels, in_batch_masks


class PairwiseCosface(nn.Layer):
    """``loss = mean_i log(1 + sum_{n, p} exp(gamma * (s_in - s_ip + margin)))``.

    ``s_ij`` is the cosine similarity of features i and j (each L2-normalised with eps 1e-12),
    p runs over i's positives (same class, p != i) and n over its negatives. Computed as
    ``softplus(logsumexp_p(-gamma * s_ip) + logsumexp_n(gamma * (s_in + margin)))``, the
    same value as PaddleClas (which masks with -99999999 instead of -inf).

    Reads ``features`` [N, D]. The batch must be P x K (every anchor needs a positive and a
    negative; without one, its term would be 0).

    Args:
        margin: additive margin on the negative similarities (PaddleClas Logo config: 0.35).
        gamma: scale (PaddleClas Logo config: 64).
    """

    def __init__(self, margin: float = 0.35, gamma: float = 64.0):
        super().__init__()
        if gamma <= 0:
            raise ValueError(f"PairwiseCosface gamma (scale) must be positive, got {gamma}")
        self.margin = float(margin)
        self.gamma = float(gamma)

    def forward(self, inputs: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
        """inputs: features [N, D] float32; labels: [N] or [N, 1] int. Returns a scalar."""
        labels = flat_labels(labels, inputs.shape[0], "PairwiseCosface")
        is_pos, is_neg = in_batch_masks(labels)
        check_pk_batch(is_pos, is_neg, labels, "PairwiseCosface")

        x = F.normalize(inputs, axis=1)
        sim = paddle.matmul(x, x, transpose_y=True)  # [N, N]
        minus_inf = paddle.full_like(sim, float("-inf"))
        logit_p = paddle.where(is_pos, -self.gamma * sim, minus_inf)
        logit_n = paddle.where(is_neg, self.gamma * (sim + self.margin), minus_inf)
        return F.softplus(paddle.logsumexp(logit_p, axis=1) + paddle.logsumexp(logit_n, axis=1)).mean()
