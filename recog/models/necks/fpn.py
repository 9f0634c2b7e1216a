"""FPN neck: multi-scale feature enhancement (Feature Pyramid Networks, Lin et al. 2017,
arXiv:1612.03144), pooled into one embedding."""

from collections.abc import Sequence

import paddle
import paddle.nn.functional as F
from paddle import nn


class FPNNeck(nn.Layer):
    """``list of stage maps -> [N, embedding_size]``.

    Contract of ``forward(features)``: ``features`` is a list (or tuple) of
    ``len(in_channels)`` feature maps ``[N, in_channels[i], H_i, W_i]`` from the backbone's last
    stages, finest first and coarsest last (so ``H_0 >= H_1 >= ...``; any sizes, the top-down
    upsampling resizes to the finer map's exact size). Unlike the other necks it does NOT take
    the flattened ``[N, C]`` backbone output: the backbone must return the stage maps.

    Computation, for levels i = 0 .. L-1:

    1. lateral: ``c_i = lateral_convs[i](x_i)``, a 1x1 conv to ``fpn_channels``;
    2. top-down: ``p_{L-1} = c_{L-1}``; ``p_i = c_i + upsample_nearest(p_{i+1}, size of c_i)``;
    3. smoothing: ``q_i = smooth_convs[i](p_i)``, a 3x3 conv (padding 1), ``fpn_channels`` out;
    4. ``fc(concat_i(global_avg_pool(q_i)))``: ``L * fpn_channels -> embedding_size``.

    ``num_levels`` keeps only the last (coarsest) ``num_levels`` of ``in_channels`` (None: all);
    ``in_channels`` then describes every stage the backbone has, as ``recog.api.build_model`` passes.

    Convolutions have biases and no activation, as in the FPN paper. Parameters:
    ``lateral_convs.{i}.*``, ``smooth_convs.{i}.*``, ``fc.*``.
    """

    multi_scale = True  # RecModel feeds it ``backbone.stage_features(images)``

    def __init__(
        self,
        in_channels: int | Sequence[int],
        embedding_size: int = 512,
        fpn_channels: int = 256,
        num_levels: int | None = None,
    ):
        super().__init__()
        in_channels = [int(in_channels)] if isinstance(in_channels, int) else [int(c) for c in in_channels]
        if not in_channels:
            raise ValueError("FPNNeck needs the channel counts of at least one stage")
        if num_levels is not None:  # the last num_levels of the stages given (recog gives them all)
            if not 1 <= num_levels <= len(in_channels):
                raise ValueError(f"num_levels={num_levels}: the backbone has {len(in_channels)} stages")
            in_channels = in_channels[-num_levels:]
        self.in_channels = in_channels
        self.embedding_size, self.fpn_channels = embedding_size, fpn_channels
        self.lateral_convs = nn.LayerList([nn.Conv2D(c, fpn_channels, 1) for c in in_channels])
        self.smooth_convs = nn.LayerList([nn.Conv2D(fpn_channels, fpn_channels, 3, padding=1) for _ in in_channels])
        self.fc = nn.Linear(len(in_channels) * fpn_channels, embedding_size)

    def forward(self, features: Sequence[paddle.Tensor]) -> paddle.Tensor:
        if isinstance(features, paddle.Tensor) or len(features) != len(self.lateral_convs):
            got = "one tensor" if isinstance(features, paddle.Tensor) else f"{len(features)} maps"
            raise ValueError(
                f"FPNNeck expects a list of {len(self.lateral_convs)} stage feature maps (finest first), got {got}"
            )
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, features)]
        merged = [None] * len(laterals)
        merged[-1] = laterals[-1]
        for i in range(len(laterals) - 2, -1, -1):
            upsampled = F.interpolate(merged[i + 1], size=laterals[i].shape[2:], mode="nearest")
            merged[i] = laterals[i] + upsampled
        pooled = [F.adaptive_avg_pool2d(conv(p), 1).flatten(1) for conv, p in zip(self.smooth_convs, merged)]
        return self.fc(paddle.concat(pooled, axis=1))
