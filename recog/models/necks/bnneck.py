"""BNNeck: batch normalisation of the embedding ("Bag of Tricks", Luo et al. 2019, arXiv:1903.07071)."""

import paddle
import paddle.nn.functional as F
from paddle import nn


class FrozenBiasBatchNorm1D(nn.Layer):
    """``BatchNorm1D`` over ``[N, C]`` whose shift ``bias`` is a frozen parameter (not trained).

    Paddle (checked on 3.3.1) cannot freeze only the bias of its batch-norm kernel: with the
    bias (or both affine parameters absent) marked ``stop_gradient`` the kernel's backward also
    drops the scale's gradient, so the scale silently never trains (Paddle requires both or
    neither to be trainable, PaddlePaddle/Paddle#47634). Here the kernel normalises without
    affine parameters and the scale and shift are applied outside it.

    State names match ``nn.BatchNorm1D``'s: ``weight``, ``bias``, ``_mean``, ``_variance``;
    running statistics are updated as there (``running = momentum * running + (1 - momentum)
    * batch``) in training mode and used in eval mode.
    """

    def __init__(self, num_features: int, momentum: float = 0.9, epsilon: float = 1e-5):
        super().__init__()
        self.num_features, self.momentum, self.epsilon = num_features, momentum, epsilon
        self.weight = self.create_parameter(
            [num_features], attr=paddle.ParamAttr(initializer=nn.initializer.Constant(1.0))
        )
        self.bias = self.create_parameter(
            [num_features],
            attr=paddle.ParamAttr(initializer=nn.initializer.Constant(0.0), trainable=False),
            is_bias=True,
        )
        self.register_buffer("_mean", paddle.zeros([num_features]), persistable=True)
        self.register_buffer("_variance", paddle.ones([num_features]), persistable=True)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        normalised = F.batch_norm(
            x,
            self._mean,
            self._variance,
            weight=None,
            bias=None,
            training=self.training,
            momentum=self.momentum,
            epsilon=self.epsilon,
        )
        return normalised * self.weight + self.bias

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, momentum={self.momentum}, epsilon={self.epsilon}, frozen bias"


class BNNeck(nn.Layer):
    """``[N, in_channels] -> [N, embedding_size]``: batch norm with a frozen zero bias.

    The BN shift is fixed at 0 and not trained (the bag-of-tricks BNNeck); the scale is
    trained, starting at 1. State ``feat_bn.weight``, ``feat_bn.bias`` (frozen),
    ``feat_bn._mean``, ``feat_bn._variance``, named as in PaddleClas's ``BNNeck`` so its weights
    load by name; momentum 0.9 and epsilon 1e-5 as there. (PaddleClas's own BNNeck ends up
    training the bias; see ``FrozenBiasBatchNorm1D`` for why a plain ``BatchNorm1D`` cannot
    freeze it.)

    ``embedding_size`` None (the default) or equal to ``in_channels`` gives the plain BNNeck.
    Any other size puts a linear projection ``fc`` (``in_channels -> embedding_size``, with bias)
    before the BN; PaddleClas has no such option (it chains an FC neck instead), so ``fc.*``
    weights only come from this package's checkpoints.

    Inputs with more than two dimensions are flattened from axis 1.
    """

    def __init__(self, in_channels: int, embedding_size: int | None = None):
        super().__init__()
        self.embedding_size = in_channels if embedding_size is None else int(embedding_size)
        self.fc = nn.Linear(in_channels, self.embedding_size) if self.embedding_size != in_channels else None
        self.feat_bn = FrozenBiasBatchNorm1D(self.embedding_size, momentum=0.9, epsilon=1e-5)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if x.ndim > 2:
            x = x.flatten(1)
        if self.fc is not None:
            x = self.fc(x)
        return self.feat_bn(x)
