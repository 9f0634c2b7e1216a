"""Deep Cauchy Hashing loss (Cao et al. 2018, "Deep Cauchy Hashing for Hamming Space
Retrieval"), as PaddleClas ``DCHLoss``."""

import paddle
import paddle.nn as nn

from recog.losses._pairs import check_class_num, flat_labels, same_class


class DCHLoss(nn.Layer):
    """Cauchy cross-entropy on pairs plus a Cauchy quantization loss, for K-bit hash features.

    With K bits, the normalised Hamming-distance surrogate is
    ``d(a, b) = K / 2 * (1 - min(cos(a, b), 0.99))`` with
    ``cos(a, b) = <a, b> / max(|a| |b|, 1e-4)``, and ``s_ij = 1`` if i and j share the class
    (the diagonal included), else 0::

        pair_ij  = w_ij * (s_ij * log(d_ij / gamma) + log(1 + gamma / d_ij))
                 = w_ij * -log(s_ij ? gamma / (gamma + d_ij) : d_ij / (gamma + d_ij))
        quant_i  = log(1 + d(|u_i|, 1) / gamma)
        loss     = mean_ij pair_ij + lambda * mean_i quant_i

    Weights balance similar and dissimilar pairs: ``w = s * N^2 / sum(s) + (1 - s) * N^2 /
    sum(1 - s)``, or all 1 when the batch has no dissimilar pair (as PaddleClas). PaddleClas's
    quantization term is an [N, N] matrix of identical columns; its mean equals ``mean_i``.

    Reads ``features`` [N, K] (real-valued codes, e.g. a tanh neck's output). Any batch works.
    ``s`` comes from label equality, which is PaddleClas's ``onehot @ onehot.T``; ``class_num``
    (PaddleClas ``n_class``) is then only used to check the labels.

    Args:
        gamma: Cauchy scale (PaddleClas DCH config: 20).
        _lambda: weight of the quantization loss (PaddleClas DCH config: 0.1).
        class_num: number of classes, or None to skip the label range check.
    """

    def __init__(self, gamma: float = 20.0, _lambda: float = 0.1, class_num: int | None = None):
        super().__init__()
        if gamma <= 0:
            raise ValueError(f"DCHLoss gamma must be positive, got {gamma}")
        self.gamma = float(gamma)
        self._lambda = float(_lambda)
        self.class_num = class_num

    def forward(self, inputs: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
        """inputs: features [N, K] float32; labels: [N] or [N, 1] int. Returns a scalar."""
        labels = flat_labels(labels, inputs.shape[0], "DCHLoss")
        check_class_num("DCHLoss", labels, self.class_num)
        s = same_class(labels).astype(inputs.dtype)  # [N, N]
        n_sim = s.sum()
        n_dissim = float(s.numel()) - n_sim
        # A where, not an if: no device read-back (n_dissim is 0 only when the batch has one class).
        balanced = s * (s.numel() / n_sim) + (1.0 - s) * (s.numel() / paddle.clip(n_dissim, min=1.0))
        w = paddle.where(n_dissim > 0, balanced, paddle.ones_like(s))

        d = self._cauchy_distance(inputs, inputs)
        pair = w * (s * paddle.log(d / self.gamma) + paddle.log(1.0 + self.gamma / d))
        d_quant = self._cauchy_distance(inputs.abs(), paddle.ones_like(inputs[:1]))  # [N, 1]
        quant = paddle.log(1.0 + d_quant / self.gamma)
        return pair.mean() + self._lambda * quant.mean()

    @staticmethod
    def _cauchy_distance(a: paddle.Tensor, b: paddle.Tensor) -> paddle.Tensor:
        """[N, K] x [M, K] -> [N, M]: ``K / 2 * (1 - min(cos, 0.99))``."""
        norm_a = paddle.norm(a, p=2, axis=1, keepdim=True)
        norm_b = paddle.norm(b, p=2, axis=1, keepdim=True)
        norms = paddle.matmul(norm_a, norm_b, transpose_y=True)
        cos = paddle.matmul(a, b, transpose_y=True) / paddle.clip(norms, min=1e-4)
        return (1.0 - paddle.clip(cos, max=0.99)) * (a.shape[1] / 2.0)
