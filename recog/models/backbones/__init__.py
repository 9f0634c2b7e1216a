"""Backbones: image ``[N, 3, H, W]`` -> features or logits."""

from recog.models.backbones.pplcnet import PPLCNet

__all__ = ["PPLCNet"]
