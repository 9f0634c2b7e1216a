"""Center loss (Wen et al. 2016, "A Discriminative Feature Learning Approach for Deep Face Recognition")."""

import paddle
import paddle.nn as nn

from recog.errors import ConfigError
from recog.losses._pairs import label_checks_enabled


class CenterLoss(nn.Layer):
    """Mean squared distance of each feature to its class centre, as PaddleClas ``CenterLoss``.

    ``loss = mean_i clip(|x_i - c_{y_i}|^2, 1e-12, 1e12)`` with learnable centres
    ``c`` (parameter ``centers`` [num_classes, feat_dim], initialised from N(0, 1)).
    As in PaddleClas: a mean over the batch, without the paper's factor 1/2, and the centres
    are learned by gradient descent (through the optimizer), not by the paper's
    running-average update. The optimizer must therefore be given this layer's parameters.

    Args:
        num_classes: number of training classes; labels must be in ``[0, num_classes)``.
        feat_dim: feature dimension D.
    """

    per_sample = True  # a mean of per-row terms: each rank computes it on its own rows (see WeightedLoss)

    def __init__(self, num_classes: int, feat_dim: int):
        super().__init__()
        if num_classes < 1 or feat_dim < 1:
            raise ConfigError(
                f"CenterLoss needs num_classes >= 1 and feat_dim >= 1, got "
                f"num_classes={num_classes}, feat_dim={feat_dim}"
            )
        self.num_classes = num_classes
        self.feat_dim = feat_dim
        self.centers = self.create_parameter(
            [num_classes, feat_dim], default_initializer=nn.initializer.Normal(0.0, 1.0)
        )

    def forward(self, inputs: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
        """inputs: features [N, feat_dim] float32; labels: [N] or [N, 1] int. Returns a scalar."""
        n, dim = inputs.shape
        labels = labels.reshape([-1]).astype("int64")
        if labels.shape[0] != n:
            raise ValueError(f"CenterLoss got {n} features but {labels.shape[0]} labels")
        if dim != self.feat_dim:
            raise ConfigError(f"CenterLoss was built with feat_dim={self.feat_dim} but got features of dimension {dim}")
        if label_checks_enabled():  # a device read-back (see recog.losses._pairs.label_checks)
            low, high = int(labels.min()), int(labels.max())
            if low < 0 or high >= self.num_classes:
                raise ConfigError(
                    f"CenterLoss was built with num_classes={self.num_classes} but got labels in [{low}, {high}]"
                )
        diff = inputs - paddle.gather(self.centers, labels)  # [N, D]
        return paddle.clip((diff * diff).sum(axis=1), min=1e-12, max=1e12).mean()
