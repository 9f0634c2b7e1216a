"""Backbones: image ``[N, 3, H, W]`` -> features or logits."""

from recog.models.backbones.pplcnet import PPLCNet
from recog.models.backbones.pplcnet_v2 import PPLCNetV2
from recog.models.backbones.resnet_vd import ResNetVd
from recog.models.backbones.vision import VisionMobileNetV3, VisionResNet
from recog.models.backbones.vit import ViT

__all__ = ["PPLCNet", "PPLCNetV2", "ResNetVd", "ViT", "VisionMobileNetV3", "VisionResNet"]
