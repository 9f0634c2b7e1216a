"""``paddle.vision.models`` ResNet and MobileNetV3 as sequential backbones.

Each wrapper builds the ``paddle.vision`` model (never with pretrained weights: nothing is
downloaded) and re-registers its parts as its own direct children, in the order the original
``forward`` runs them, with an explicit ``flatten`` where the original calls
``paddle.flatten(x, 1)``. ``forward`` runs the children in that order, so the result equals the
original model's and ``recog.models.stop_layer.truncate_after`` can cut it. Parameter names are
the original ones (``conv1.weight``, ``layer1.0.conv1.weight``, ``fc.weight``, ...), so
``paddle.vision`` checkpoints load by name with ``set_state_dict``.
"""

from paddle import nn
from paddle.vision.models import MobileNetV3Large, MobileNetV3Small
from paddle.vision.models.resnet import BasicBlock, BottleneckBlock, ResNet

RESNET_BLOCKS = {18: BasicBlock, 34: BasicBlock, 50: BottleneckBlock, 101: BottleneckBlock, 152: BottleneckBlock}
MOBILENET_V3 = {"small": MobileNetV3Small, "large": MobileNetV3Large}


class _Sequential(nn.Layer):
    """Holds the parts of a ``paddle.vision`` model as direct children, run in order."""

    def _adopt(self, model: nn.Layer, names: list[str]) -> None:
        # Only the parts become sublayers (not ``model`` itself), so each parameter appears
        # once, under its original name.
        for name in names:
            if name == "flatten":
                self.flatten = nn.Flatten(start_axis=1, stop_axis=-1)
            else:
                self.add_sublayer(name, getattr(model, name))

    def forward(self, x):
        for layer in self.children():
            x = layer(x)
        return x


class VisionResNet(_Sequential):
    """``paddle.vision.models.ResNet`` (original "vb" ResNet: 7x7 stem, stride in the 3x3 conv).

    Children in forward order: ``conv1``, ``bn1``, ``relu``, ``maxpool``, ``layer1`` ...
    ``layer4`` (``Sequential``s of blocks: ``layer3.5`` etc. are valid stop layers),
    ``avgpool``, ``flatten``, ``fc``. Output ``[N, class_num]``; ``[N, C]`` after ``flatten``
    with ``C = 512`` (depth 18/34) or ``2048`` (50/101/152). ``class_num <= 0`` leaves out
    ``fc`` (but, unlike ``paddle.vision``, keeps ``flatten``: the output is ``[N, C]``).
    """

    def __init__(self, depth: int = 50, class_num: int = 1000):
        super().__init__()
        if depth not in RESNET_BLOCKS:
            raise ValueError(f"VisionResNet depth must be one of {', '.join(map(str, RESNET_BLOCKS))}; got {depth!r}")
        self.depth = depth
        model = ResNet(RESNET_BLOCKS[depth], depth, num_classes=class_num, with_pool=True)
        names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "flatten"]
        self._adopt(model, names + (["fc"] if class_num > 0 else []))
        self.out_channels = 512 * RESNET_BLOCKS[depth].expansion


class VisionMobileNetV3(_Sequential):
    """``paddle.vision.models.MobileNetV3Small``/``MobileNetV3Large``.

    Children in forward order: ``conv`` (stem), ``blocks`` (``Sequential`` of inverted
    residuals), ``lastconv`` (1x1 conv + BN + h-swish), ``avgpool``, ``flatten``,
    ``classifier`` (``Sequential``: ``0`` Linear to 1024*scale (small) / 1280*scale (large),
    ``1`` Hardswish, ``2`` Dropout(0.2), ``3`` Linear to ``class_num``). After ``flatten`` the
    features are ``[N, 576]`` (small) / ``[N, 960]`` (large) at scale 1.0; ``classifier.1``
    gives the wider pre-logit embedding. ``class_num <= 0`` leaves out ``classifier`` (and
    keeps ``flatten``, unlike ``paddle.vision``).
    """

    def __init__(self, size: str = "large", scale: float = 1.0, class_num: int = 1000):
        super().__init__()
        if size not in MOBILENET_V3:
            raise ValueError(f"VisionMobileNetV3 size must be one of {', '.join(MOBILENET_V3)}; got {size!r}")
        if not scale > 0:
            raise ValueError(f"VisionMobileNetV3 scale must be positive; got {scale!r}")
        self.size, self.scale = size, scale
        model = MOBILENET_V3[size](scale=scale, num_classes=class_num, with_pool=True)
        names = ["conv", "blocks", "lastconv", "avgpool", "flatten"]
        self._adopt(model, names + (["classifier"] if class_num > 0 else []))
        self.out_channels = model.lastconv_out_channels
