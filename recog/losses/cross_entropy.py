"""Softmax cross entropy with optional label smoothing."""

import paddle
import paddle.nn as nn
import paddle.nn.functional as F


class CELoss(nn.Layer):
    """Softmax cross entropy, averaged over the batch.

    With ``epsilon`` the one-hot target is smoothed as in PaddleClas:
    ``target = (1 - epsilon) * onehot(label) + epsilon / C``.

    Args:
        epsilon: label-smoothing factor in (0, 1), or None for plain cross entropy.
    """

    per_sample = True  # a mean of per-row terms: each rank computes it on its own rows (see WeightedLoss)

    def __init__(self, epsilon: float | None = None):
        super().__init__()
        if epsilon is not None and not 0.0 < epsilon < 1.0:
            raise ValueError(f"CELoss epsilon (label smoothing) must be in (0, 1) or None, got {epsilon}")
        self.epsilon = epsilon

    def forward(self, inputs: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
        """inputs: logits [N, C] float; labels: class ids [N] or [N, 1] int. Returns a scalar."""
        n, num_classes = inputs.shape
        labels = labels.reshape([-1]).astype("int64")
        if labels.shape[0] != n:
            raise ValueError(f"CELoss got {n} logits rows but {labels.shape[0]} labels")
        target = F.one_hot(labels, num_classes).astype(inputs.dtype)
        if self.epsilon is not None:
            target = (1.0 - self.epsilon) * target + self.epsilon / num_classes
        per_sample = -(target * F.log_softmax(inputs, axis=-1)).sum(axis=-1)
        return per_sample.mean()
