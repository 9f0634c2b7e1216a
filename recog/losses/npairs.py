"""Multi-class N-pair loss (Sohn 2016, "Improved Deep Metric Learning with Multi-class N-pair Loss")."""

import paddle
import paddle.nn as nn

from recog.errors import ConfigError
from recog.losses._pairs import label_checks_enabled


class NpairsLoss(nn.Layer):
    """N-pair loss on a batch of two samples per class, as PaddleClas ``NpairsLoss``.

    In each class the sample that comes first in the batch is the anchor ``a_c``, the other the
    positive ``p_c``. With ``s_cd = a_c.p_d`` (raw features, no normalisation):
    ``loss = mean_c [log sum_d exp(s_cd) - s_cc] + 0.5 * reg_lambda * mean_i |x_i|^2``,
    the regulariser taken over all 2P features.

    PaddleClas takes pairs by batch position (samples 2c, 2c+1); here the labels pair them, so
    the classes may come in any order: on an ordered P x 2 batch the value is the same. Swapping
    a class's two samples swaps anchor and positive, which changes the value (the loss is not
    symmetric). The batch must be P x 2: exactly two samples of each class, at least two classes.

    Args:
        reg_lambda: weight of the L2 penalty on the features.
    """

    def __init__(self, reg_lambda: float = 0.01):
        super().__init__()
        self.reg_lambda = reg_lambda

    def forward(self, inputs: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
        """inputs: features [N, D] float32; labels: [N] or [N, 1] int. Returns a scalar."""
        n = inputs.shape[0]
        labels = labels.reshape([-1])
        if labels.shape[0] != n:
            raise ValueError(f"NpairsLoss got {n} features but {labels.shape[0]} labels")
        if label_checks_enabled():  # device read-backs (see recog.losses._pairs.label_checks)
            classes, counts = paddle.unique(labels, return_counts=True)
            if classes.shape[0] < 2 or bool((counts != 2).any()):
                raise ConfigError(
                    "NpairsLoss needs P x K batches with K = 2 (exactly two images per class, several "
                    f"classes per batch): this batch has {n} samples in {classes.shape[0]} class(es) with "
                    f"{sorted(set(counts.numpy().tolist()))} samples per class. "
                    "Use the P x K sampler with data.samples_per_class=2."
                )
        order = paddle.argsort(labels, stable=True)  # classes grouped, batch order kept inside each
        anchors = paddle.gather(inputs, order[0::2])  # [P, D]
        positives = paddle.gather(inputs, order[1::2])  # [P, D]
        sim = paddle.matmul(anchors, positives, transpose_y=True)  # [P, P]
        xent = (paddle.logsumexp(sim, axis=1) - paddle.diagonal(sim)).mean()
        reg = (inputs * inputs).sum(axis=1).mean()
        return xent + 0.5 * self.reg_lambda * reg
