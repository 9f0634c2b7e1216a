"""Image decoding and the train / eval pipeline (OpenCV + NumPy, no Paddle)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from recog.errors import ConfigError, DataError


def decode_image(path: str) -> np.ndarray:
    """Read an image file as ``[H, W, 3] uint8`` RGB (grayscale is repeated to 3 channels)."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"cannot decode image {path}: the file is missing, unreadable or not "
                        "an image format OpenCV reads")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


@dataclass(frozen=True)
class Transform:
    """``[H, W, 3] uint8 RGB -> [3, S, S] float32``, normalised per RGB channel.

    Steps: resize to ``S x S`` (bilinear); if ``flip`` a horizontal flip with p=0.5; scale to
    [0, 1]; ``(x - mean) / std``; HWC -> CHW.
    """

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    flip: bool = False

    @property
    def is_random(self) -> bool:
        return self.flip

    def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """``rng`` drives the augmentation (a fresh unseeded one if None)."""
        size = self.image_size
        if image.shape[:2] != (size, size):
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
        if self.flip and (rng if rng is not None else np.random.default_rng()).random() < 0.5:
            image = image[:, ::-1]
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        x = (image.astype(np.float32) * np.float32(1 / 255) - mean) / std
        return np.ascontiguousarray(x.transpose(2, 0, 1))


def build_transform(image_size: int, mean: Sequence[float], std: Sequence[float], train: bool,
                    hflip: bool) -> Transform:
    """Eval transform if not ``train``; random horizontal flips only if ``train and hflip``."""
    if int(image_size) != image_size or image_size < 1:
        raise ConfigError(f"data.image_size must be a positive integer, got {image_size}")
    if len(mean) != 3 or len(std) != 3:
        raise ConfigError(f"data.mean and data.std need 3 values (R, G, B), got {list(mean)} "
                          f"and {list(std)}")
    if min(std) <= 0:
        raise ConfigError(f"data.std must be positive, got {list(std)}")
    return Transform(int(image_size), tuple(map(float, mean)), tuple(map(float, std)),
                     flip=bool(train and hflip))
