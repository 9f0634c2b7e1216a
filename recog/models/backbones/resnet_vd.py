"""ResNet-vd (He et al., "Bag of Tricks for Image Classification with CNNs", 2019,
arXiv:1812.01187), laid out so PaddleClas's released ``ResNet{18,34,50,101,152}_vd_pretrained``
(and ``*_ssld``) ``.pdparams`` load by parameter name.

Compared with the original ResNet ("vb": stride on the 3x3 conv of a bottleneck), "vd"
replaces the 7x7 stem conv with three 3x3 convs, and in the downsampling shortcuts of stages
2-4 puts a 2x2 stride-2 average pool in front of a stride-1 1x1 conv, so the shortcut no
longer discards three quarters of its input. As in PaddleClas, the first block of *every*
stage has a projection shortcut (also in ResNet18/34, where stage 1 keeps 64 channels); the
one of stage 1 is a plain stride-1 1x1 conv without the pool.
"""

import math

from paddle import ParamAttr, nn
from paddle.nn.initializer import Uniform

# depth -> (block type, blocks per stage)
DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
STAGE_WIDTHS = (64, 128, 256, 512)  # inner width of each stage's blocks
EXPANSION = {"basic": 1, "bottleneck": 4}  # block output channels = inner width * expansion


class ConvBNLayer(nn.Layer):
    """[2x2 avg pool, stride ``stride``] + conv (no bias) + BN [+ ReLU].

    ``padding=(k-1)//2`` gives ``ceil(H/stride)`` outputs. With ``vd_pool`` the stride moves
    from the conv to a preceding average pool (``"SAME"`` padding, ``ceil_mode``, padded cells
    excluded from the mean), which also gives ``ceil(H/stride)``, so odd sizes still add up
    with the residual branch.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        act: bool = True,
        vd_pool: bool = False,
    ):
        super().__init__()
        # Parameter-free, so registering it only when used leaves the state dict unchanged.
        self.avg_pool = nn.AvgPool2D(kernel_size=2, stride=stride, padding="SAME", ceil_mode=True) if vd_pool else None
        self.conv = nn.Conv2D(
            in_channels,
            out_channels,
            kernel_size,
            stride=1 if vd_pool else stride,
            padding=(kernel_size - 1) // 2,
            bias_attr=False,
        )
        self.bn = nn.BatchNorm2D(out_channels)
        self.relu = nn.ReLU() if act else None

    def forward(self, x):
        if self.avg_pool is not None:
            x = self.avg_pool(x)
        x = self.bn(self.conv(x))
        if self.relu is not None:
            x = self.relu(x)
        return x


class BasicBlock(nn.Layer):
    """3x3 conv (stride) + 3x3 conv, plus the shortcut; ``width`` output channels."""

    def __init__(self, in_channels: int, width: int, stride: int, project: bool, vd_pool: bool):
        super().__init__()
        self.conv0 = ConvBNLayer(in_channels, width, 3, stride=stride)
        self.conv1 = ConvBNLayer(width, width, 3, act=False)
        self.short = ConvBNLayer(in_channels, width, 1, stride, act=False, vd_pool=vd_pool) if project else None
        self.relu = nn.ReLU()

    def forward(self, x):
        shortcut = x if self.short is None else self.short(x)
        return self.relu(self.conv1(self.conv0(x)) + shortcut)


class BottleneckBlock(nn.Layer):
    """1x1 conv + 3x3 conv (stride) + 1x1 conv to ``4 * width``, plus the shortcut."""

    def __init__(self, in_channels: int, width: int, stride: int, project: bool, vd_pool: bool):
        super().__init__()
        self.conv0 = ConvBNLayer(in_channels, width, 1)
        self.conv1 = ConvBNLayer(width, width, 3, stride=stride)
        self.conv2 = ConvBNLayer(width, width * 4, 1, act=False)
        self.short = ConvBNLayer(in_channels, width * 4, 1, stride, act=False, vd_pool=vd_pool) if project else None
        self.relu = nn.ReLU()

    def forward(self, x):
        shortcut = x if self.short is None else self.short(x)
        return self.relu(self.conv2(self.conv1(self.conv0(x))) + shortcut)


_BLOCKS = {"basic": BasicBlock, "bottleneck": BottleneckBlock}


class ResNetVd(nn.Layer):
    """ResNet-vd classifier. Input ``[N, 3, H, W]`` float32; output logits ``[N, class_num]``.

    Children, run in this order by ``forward`` (so ``truncate_after`` can cut the model):
    ``stem`` (3x3 convs 3->32 stride 2, 32->32, 32->64, each BN + ReLU), ``max_pool`` (3x3,
    stride 2), ``blocks`` (one ``Sequential`` of all residual blocks of the four stages,
    numbered continuously: ``blocks.0`` ... ``blocks.{sum(depths)-1}``), ``avg_pool``
    (global), ``flatten``, ``fc``.

    Feature widths: ``[N, C, H/32, W/32]`` after ``blocks`` and ``[N, C]`` after ``flatten``,
    with ``C = 512`` for depth 18/34 and ``2048`` for 50/101/152.

    For a multi-scale (FPN) neck: ``stage_ends[i]`` is the index of the last block of stage
    ``i + 1`` (so ``blocks.{stage_ends[i]}`` outputs stride ``4 * 2**i``, i.e. 4, 8, 16, 32),
    and ``stage_channels[i]`` is its channel count; e.g. depth 50: ``stage_ends == [2, 6, 12,
    15]``, ``stage_channels == [256, 512, 1024, 2048]`` (PaddleClas's ``MODEL_STAGES_PATTERN``).
    ``stage_features(x)`` returns those four maps, finest first.
    """

    def __init__(self, depth: int = 50, class_num: int = 1000):
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"ResNetVd depth must be one of {', '.join(map(str, DEPTHS))}; got {depth!r}")
        self.depth = depth
        kind, depths = DEPTHS[depth]
        expansion = EXPANSION[kind]

        self.stem = nn.Sequential(
            ConvBNLayer(3, 32, 3, stride=2),
            ConvBNLayer(32, 32, 3),
            ConvBNLayer(32, 64, 3),
        )
        self.max_pool = nn.MaxPool2D(kernel_size=3, stride=2, padding=1)

        blocks, self.stage_ends, self.stage_channels = [], [], []
        in_channels = 64
        for stage, (n_blocks, width) in enumerate(zip(depths, STAGE_WIDTHS)):
            for i in range(n_blocks):
                first = i == 0
                blocks.append(
                    _BLOCKS[kind](
                        in_channels,
                        width,
                        stride=2 if first and stage > 0 else 1,
                        project=first,  # every stage opens with a projection shortcut
                        vd_pool=first and stage > 0,  # ... average-pooled where it downsamples
                    )
                )
                in_channels = width * expansion
            self.stage_ends.append(len(blocks) - 1)
            self.stage_channels.append(in_channels)
        self.blocks = nn.Sequential(*blocks)

        self.avg_pool = nn.AdaptiveAvgPool2D(1)
        self.flatten = nn.Flatten(start_axis=1, stop_axis=-1)
        bound = 1.0 / math.sqrt(in_channels)
        self.fc = nn.Linear(in_channels, class_num, weight_attr=ParamAttr(initializer=Uniform(-bound, bound)))

    @property
    def out_channels(self) -> int:
        """Channels after ``blocks`` / ``flatten`` (512 or 2048)."""
        return self.stage_channels[-1]

    def stage_features(self, x) -> list:
        """Outputs of the last block of each stage, finest first: ``[N, stage_channels[i],
        H / (4 * 2**i), W / (4 * 2**i)]`` (sizes rounded up). After truncation inside ``blocks``,
        only the stages that are still complete."""
        x = self.max_pool(self.stem(x))
        features = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.stage_ends:
                features.append(x)
        return features

    def forward(self, x):
        for layer in self.children():
            x = layer(x)
        return x
