"""PP-LCNetV2 (PaddleClas 2022), laid out so PaddleClas's released ``PPLCNetV2_*`` weights
(and the PP-ShiTuV2 ``PPLCNetV2_base_ShiTu`` backbone) load by parameter name.

A stem (3x3 conv, stride 2, then a depthwise-separable block), four stages whose first block
halves the resolution, global average pooling, a 1x1 ``last_conv`` to ``class_expand`` channels,
ReLU, dropout, flatten and a linear classifier. Stage 3 and 4 blocks are re-parameterisable:
their depthwise conv is a sum of BN'd depthwise convs of kernels k, k-2, ..., 1 (the 1x1 only
at stride 1), each without activation, followed by one ReLU.
"""

import paddle
import paddle.nn.functional as F
from paddle import ParamAttr, nn
from paddle.nn.initializer import KaimingNormal
from paddle.regularizer import L2Decay

from recog.models.backbones.pplcnet import make_divisible

# size -> (width scale, blocks per stage), as PaddleClas's PPLCNetV2_small / _base / _large.
SIZES = {"small": (0.75, (2, 2, 4, 2)), "base": (1.0, (2, 2, 6, 2)), "large": (1.25, (2, 2, 8, 2))}

# Per stage at scale 1.0: (in channels; out = 2x), depthwise kernel, split pointwise conv,
# re-parameterisable depthwise conv, SE, residual shortcut (where shapes allow).
STAGES = (
    (64, 3, False, False, False, False),
    (128, 3, False, False, False, False),
    (256, 5, True, True, True, False),
    (512, 5, False, True, False, True),
)


class ConvBN(nn.Layer):
    """Conv (no bias, ``H/stride`` x ``W/stride``) + BN [+ ReLU when ``act``]."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1, act: bool = True
    ):
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
        no_decay = ParamAttr(regularizer=L2Decay(0.0))  # BN scale/shift exempt from weight decay, as in PaddleClas
        self.bn = nn.BatchNorm2D(out_channels, weight_attr=no_decay, bias_attr=no_decay)
        self.act = nn.ReLU() if act else None

    def forward(self, x):
        x = self.bn(self.conv(x))
        return self.act(x) if self.act is not None else x


class SqueezeExcite(nn.Layer):
    """``x * sigmoid(conv2(relu(conv1(avgpool(x)))))``, channel reduction 4."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2D(1)
        self.conv1 = nn.Conv2D(channels, channels // reduction, 1)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2D(channels // reduction, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        return x * self.gate(self.conv2(self.act(self.conv1(self.avg_pool(x)))))


class RepDepthwiseSeparable(nn.Layer):
    """Depthwise conv (plain ConvBN+ReLU, or the re-parameterisable sum) [+ SE] + pointwise
    conv(s) (one 1x1 ConvBN+ReLU, or two when ``split_pw``: to ``out/2`` then ``out``)
    [+ identity shortcut when ``shortcut`` and stride 1 and ``in == out``].

    With ``rep``, ``dw_conv`` is the single conv (with bias) the branches fuse into for
    deployment (``fuse_branches``, in eval mode only: it bakes in the BN running statistics).
    It is kept so that PaddleClas's weight files load with no unexpected key; until fused it is
    not used and its parameters are frozen.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        kernel_size: int = 3,
        split_pw: bool = False,
        rep: bool = False,
        se: bool = False,
        shortcut: bool = False,
    ):
        super().__init__()
        self.rep = rep
        self.shortcut = shortcut and stride == 1 and in_channels == out_channels
        if rep:
            kernels = [k for k in range(kernel_size, 0, -2) if k > 1 or stride == 1]
            self.dw_conv_list = nn.LayerList(
                [ConvBN(in_channels, in_channels, k, stride, groups=in_channels, act=False) for k in kernels]
            )
            self.dw_conv = nn.Conv2D(
                in_channels, in_channels, kernel_size, stride=stride, padding=(kernel_size - 1) // 2, groups=in_channels
            )
            for param in self.dw_conv.parameters():
                param.stop_gradient = True
        else:
            self.dw_conv = ConvBN(in_channels, in_channels, kernel_size, stride, groups=in_channels)
        self.act = nn.ReLU()
        self.se = SqueezeExcite(in_channels) if se else None
        if split_pw:
            self.pw_conv_1 = ConvBN(in_channels, out_channels // 2, 1)
            self.pw_conv_2 = ConvBN(out_channels // 2, out_channels, 1)
        else:
            self.pw_conv = ConvBN(in_channels, out_channels, 1)
        self.split_pw = split_pw
        self.fused = False

    def fuse_branches(self) -> None:
        """Fold the BN'd depthwise branches into ``dw_conv`` (kernels zero-padded to the largest,
        each scaled by ``gamma / sqrt(var + eps)``, biases ``beta - mean * gamma / sqrt(var + eps)``,
        summed); ``forward`` then runs the single conv. Same outputs in eval mode, fewer ops."""
        if not self.rep:
            return
        size = self.dw_conv.weight.shape[-1]
        kernel, bias = 0.0, 0.0
        for branch in self.dw_conv_list:
            bn = branch.bn
            scale = bn.weight / paddle.sqrt(bn._variance + bn._epsilon)
            pad = (size - branch.conv.weight.shape[-1]) // 2
            kernel = kernel + F.pad(branch.conv.weight * scale.reshape([-1, 1, 1, 1]), [pad, pad, pad, pad])
            bias = bias + bn.bias - bn._mean * scale
        self.dw_conv.weight.set_value(kernel)
        self.dw_conv.bias.set_value(bias)
        self.fused = True

    def forward(self, x):
        identity = x
        if self.rep and self.fused:
            x = self.act(self.dw_conv(x))
        elif self.rep:
            branches = [conv(x) for conv in self.dw_conv_list]
            y = branches[0]
            for branch in branches[1:]:
                y = y + branch
            x = self.act(y)
        else:
            x = self.dw_conv(x)
        if self.se is not None:
            x = self.se(x)
        x = self.pw_conv_2(self.pw_conv_1(x)) if self.split_pw else self.pw_conv(x)
        return x + identity if self.shortcut else x


class PPLCNetV2(nn.Layer):
    """PP-LCNetV2 classifier. Input ``[N, 3, H, W]`` float32; output logits ``[N, class_num]``.

    Total stride 32 (16 with ``shitu``); after ``stages.3`` the map is
    ``[N, 1024*scale (rounded), H/32, W/32]``, after ``flatten`` ``[N, class_expand]``.
    ``forward`` runs the direct children in registration order (the ``stages`` list stage by
    stage), so the model can be cut after any of them with ``recog.models.stop_layer.truncate_after``
    (e.g. ``flatten``, ``avg_pool``, ``stages.2``).

    Args:
        size: ``small`` (x0.75), ``base`` (x1.0) or ``large`` (x1.25).
        class_num: classifier outputs.
        dropout_prob: dropout before ``flatten`` (no rescaling in training, times 1-p at inference).
        class_expand: channels of ``last_conv`` (the feature width at ``flatten``).
        shitu: PaddleClas's ``PPLCNetV2_base_ShiTu`` variant (PP-ShiTuV2): the last stage at
            stride 1 (its first block then also has a 1x1 depthwise branch), ``last_conv`` with a
            bias and no ReLU after it.
    """

    def __init__(
        self,
        size: str = "base",
        class_num: int = 1000,
        dropout_prob: float = 0.2,
        class_expand: int = 1280,
        shitu: bool = False,
    ):
        super().__init__()
        if size not in SIZES:
            raise ValueError(f"PPLCNetV2 size must be one of {', '.join(SIZES)}; got {size!r}")
        scale, depths = SIZES[size]
        self.size, self.scale, self.shitu = size, scale, shitu

        self.stem = nn.Sequential(
            ConvBN(3, make_divisible(32 * scale), 3, stride=2),
            RepDepthwiseSeparable(make_divisible(32 * scale), make_divisible(64 * scale), stride=1, kernel_size=3),
        )
        self.stages = nn.LayerList()
        for index, ((channels, kernel, split_pw, rep, se, shortcut), depth) in enumerate(zip(STAGES, depths)):
            last = index == len(STAGES) - 1
            blocks = []
            for i in range(depth):
                stride = 2 if i == 0 and not (shitu and last) else 1
                c_in = make_divisible((channels if i == 0 else 2 * channels) * scale)
                blocks.append(
                    RepDepthwiseSeparable(
                        c_in, make_divisible(2 * channels * scale), stride, kernel, split_pw, rep, se, shortcut
                    )
                )
            self.stages.append(nn.Sequential(*blocks))
        self.avg_pool = nn.AdaptiveAvgPool2D(1)
        self.last_conv = nn.Conv2D(self.stage_channels[-1], class_expand, 1, bias_attr=None if shitu else False)
        self.act = nn.Identity() if shitu else nn.ReLU()
        self.dropout = nn.Dropout(p=dropout_prob, mode="downscale_in_infer")
        self.flatten = nn.Flatten(start_axis=1, stop_axis=-1)
        self.fc = nn.Linear(class_expand, class_num)

    def fuse_branches(self) -> "PPLCNetV2":
        """Fold every re-parameterisable block's branches into one conv (for inference: call it
        on a model in eval mode, after its weights are final); returns the model."""
        with paddle.no_grad():
            for layer in self.sublayers():
                if isinstance(layer, RepDepthwiseSeparable):
                    layer.fuse_branches()
        return self

    @property
    def stage_channels(self) -> list:
        """Output channels of ``stages.0`` .. ``stages.3`` (strides 4, 8, 16, 32), for an FPN neck."""
        return [make_divisible(2 * row[0] * self.scale) for row in STAGES]

    def stage_features(self, x) -> list:
        """Outputs of ``stages.0`` .. ``stages.3``, finest first: ``[N, stage_channels[i], H_i, W_i]``."""
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

    def forward(self, x):
        for layer in self.children():
            if isinstance(layer, nn.LayerList):
                for stage in layer:
                    x = stage(x)
            else:
                x = layer(x)
        return x
