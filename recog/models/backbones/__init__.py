"""Backbones: image ``[N, 3, H, W]`` -> features or logits."""

from recog.models.backbones.pplcnet import PPLCNet
from recog.models.backbones.resnet_vd import ResNetVd
from recog.models.backbones.vision import VisionMobileNetV3, VisionResNet

__all__ = ["PPLCNet", "ResNetVd", "VisionMobileNetV3", "VisionResNet"]
