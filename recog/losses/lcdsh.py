"""Locality-Constrained Deep Supervised Hashing loss (Zhu & Gao 2017, IJCAI), as PaddleClas
``LCDSHLoss``."""

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from recog.losses._pairs import check_class_num, flat_labels, same_class


class LCDSHLoss(nn.Layer):
    """Pairwise likelihood on code inner products plus a relaxation-consistency term.

    With ``theta_ij = clip(<u_i, u_j> / 2, -50, 50)`` for the K-bit real-valued codes u,
    ``theta'_ij = <b_i, b_j> / 2`` for the binary codes ``b = sign(u)``, and ``s_ij = +1`` if i
    and j share the class (the diagonal included), else -1::

        L1   = mean_ij log(1 + exp(-s_ij * theta_ij))
        L2   = mean_ij (sigmoid(theta_ij) - sigmoid(theta'_ij))^2
        loss = L1 + lambda * L2

    ``sign`` passes no gradient, so L2 pulls the relaxed similarities towards the binary ones.

    Reads ``features`` [N, K] (real-valued codes, e.g. a tanh neck's output). Any batch works.
    ``s`` comes from label equality, which is PaddleClas's one-hot inner product; ``class_num``
    (PaddleClas ``n_class``) is then only used to check the labels.

    Args:
        class_num: number of classes, or None to skip the label range check.
        _lambda: weight of L2 (PaddleClas LCDSH config: 3).
    """

    def __init__(self, class_num: int | None = None, _lambda: float = 3.0):
        super().__init__()
        self.class_num = class_num
        self._lambda = float(_lambda)

    def forward(self, inputs: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
        """inputs: features [N, K] float32; labels: [N] or [N, 1] int. Returns a scalar."""
        labels = flat_labels(labels, inputs.shape[0], "LCDSHLoss")
        check_class_num("LCDSHLoss", labels, self.class_num)
        s = same_class(labels).astype(inputs.dtype) * 2.0 - 1.0  # [N, N] in {-1, +1}
        theta = paddle.clip(0.5 * paddle.matmul(inputs, inputs, transpose_y=True), min=-50.0, max=50.0)
        likelihood = F.softplus(-s * theta).mean()

        codes = paddle.sign(inputs).detach()
        theta_binary = 0.5 * paddle.matmul(codes, codes, transpose_y=True)
        consistency = (F.sigmoid(theta) - F.sigmoid(theta_binary)).pow(2).mean()
        return likelihood + self._lambda * consistency
