"""PP-LCNet (Cui et al., 2021, arXiv:2109.15099), laid out so PaddleClas's released
``PPLCNet_x*_pretrained.pdparams`` load by parameter name."""

from paddle import ParamAttr, nn
from paddle.nn.initializer import KaimingNormal
from paddle.regularizer import L2Decay

SCALES = (0.25, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5)

# Per stage, one row per depthwise-separable block at scale 1.0:
# (depthwise kernel, in channels, out channels, depthwise stride, use SE).
NET_CONFIG = {
    "blocks2": [(3, 16, 32, 1, False)],
    "blocks3": [(3, 32, 64, 2, False), (3, 64, 64, 1, False)],
    "blocks4": [(3, 64, 128, 2, False), (3, 128, 128, 1, False)],
    "blocks5": [(3, 128, 256, 2, False)] + [(5, 256, 256, 1, False)] * 5,
    "blocks6": [(5, 256, 512, 2, True), (5, 512, 512, 1, True)],
}


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round ``v`` to the nearest multiple of ``divisor`` (at least ``divisor``), never
    going more than 10% below ``v``."""
    rounded = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * v else rounded


class ConvBNLayer(nn.Layer):
    """Conv (no bias) + BN + h-swish; ``padding`` keeps ``H/stride`` x ``W/stride``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2D(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=(kernel_size - 1) // 2,
            groups=groups,
            weight_attr=ParamAttr(initializer=KaimingNormal()),
            bias_attr=False,
        )
        # As in PaddleClas, BN scale/shift are exempt from weight decay.
        no_decay = ParamAttr(regularizer=L2Decay(0.0))
        self.bn = nn.BatchNorm2D(out_channels, weight_attr=no_decay, bias_attr=no_decay)
        self.act = nn.Hardswish()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class SEModule(nn.Layer):
    """Squeeze-and-excitation: ``[N, C, H, W]`` scaled per channel by a gate in [0, 1]."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2D(1)
        self.conv1 = nn.Conv2D(channels, channels // reduction, 1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2D(channels // reduction, channels, 1)
        self.hardsigmoid = nn.Hardsigmoid()

    def forward(self, x):
        gate = self.hardsigmoid(self.conv2(self.relu(self.conv1(self.avg_pool(x)))))
        return x * gate


class DepthwiseSeparable(nn.Layer):
    """Depthwise kxk conv (stride s) [+ SE] + pointwise 1x1 conv, each with BN + h-swish."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, use_se: bool):
        super().__init__()
        self.dw_conv = ConvBNLayer(in_channels, in_channels, kernel_size, stride, groups=in_channels)
        # Only registered when used: the released weights have `se.*` keys in blocks6 alone.
        self.se = SEModule(in_channels) if use_se else None
        self.pw_conv = ConvBNLayer(in_channels, out_channels, 1, 1)

    def forward(self, x):
        x = self.dw_conv(x)
        if self.se is not None:
            x = self.se(x)
        return self.pw_conv(x)


class PPLCNet(nn.Layer):
    """PP-LCNet classifier. Input ``[N, 3, H, W]`` float32; output logits ``[N, class_num]``.

    The total stride is 32; features are ``[N, 512*scale (rounded), H/32, W/32]`` after
    ``blocks6``, ``[N, class_expand, 1, 1]`` after ``last_conv``/``hardswish``/``dropout`` and
    ``[N, class_expand]`` after ``flatten``. ``forward`` runs the direct children in
    registration order, so the model can be cut with ``recog.models.stop_layer.truncate_after``.
    """

    def __init__(self, scale: float = 2.5, class_num: int = 1000, dropout_prob: float = 0.2, class_expand: int = 1280):
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"PPLCNet scale must be one of {', '.join(map(str, SCALES))}; got {scale}")
        self.scale = scale

        self.conv1 = ConvBNLayer(3, make_divisible(16 * scale), 3, stride=2)
        for stage, rows in NET_CONFIG.items():
            blocks = [
                DepthwiseSeparable(make_divisible(c_in * scale), make_divisible(c_out * scale), k, s, se)
                for k, c_in, c_out, s, se in rows
            ]
            self.add_sublayer(stage, nn.Sequential(*blocks))
        self.avg_pool = nn.AdaptiveAvgPool2D(1)
        self.last_conv = nn.Conv2D(make_divisible(512 * scale), class_expand, 1, bias_attr=False)
        self.hardswish = nn.Hardswish()
        # Like PaddleClas: no rescaling while training, activations times (1 - p) at inference.
        self.dropout = nn.Dropout(p=dropout_prob, mode="downscale_in_infer")
        self.flatten = nn.Flatten(start_axis=1, stop_axis=-1)
        self.fc = nn.Linear(class_expand, class_num)

    @property
    def stage_channels(self) -> list:
        """Channels of ``blocks3`` .. ``blocks6`` (strides 4, 8, 16, 32), for an FPN neck."""
        return [make_divisible(rows[-1][2] * self.scale) for stage, rows in NET_CONFIG.items() if stage != "blocks2"]

    def stage_features(self, x) -> list:
        """Outputs of ``blocks3`` .. ``blocks6``, finest first: ``[N, stage_channels[i], H_i, W_i]``."""
        features = []
        for name, layer in self.named_children():
            x = layer(x)
            if name in ("blocks3", "blocks4", "blocks5", "blocks6"):
                features.append(x)
            if name == "blocks6":
                break
        return features

    def forward(self, x):
        for layer in self.children():
            x = layer(x)
        return x
