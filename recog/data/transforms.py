"""Image decoding and the train / eval pipeline (OpenCV + NumPy, no Paddle)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from recog.data.image_header import JPEG_SOI, image_size, jpeg_is_truncated
from recog.errors import BadImageError, ConfigError

DEFAULT_MAX_IMAGE_PIXELS = 100_000_000  # 100 megapixels, 300 MB decoded: above it, likely a bomb


def read_image_file(path: str) -> bytes:
    """The bytes of an image file; ``BadImageError`` if it is missing, unreadable or empty."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise BadImageError(path, "missing: the file does not exist") from None
    except OSError as e:
        raise BadImageError(path, f"unreadable: {e.strerror or e}") from None
    except ValueError as e:  # a NUL byte in the path
        raise BadImageError(path, f"unreadable path: {e}") from None
    if not data:
        raise BadImageError(path, "empty: the file has zero bytes")
    return data


def _check_pixels(path: str, width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise BadImageError(path, f"too large: {width} x {height} = {width * height} pixels is over "
                                  f"data.max_image_pixels={max_pixels} (a decompression bomb?)")


def decode_image(path: str, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read an image file as ``[H, W, 3] uint8`` RGB (grayscale is repeated to 3 channels).

    Raises ``BadImageError`` (a ``DataError``) naming the path and the reason: missing, unreadable,
    empty, truncated (JPEG without its end marker; other formats fail to decode), not an image
    OpenCV reads, or over ``max_pixels`` (None: no limit of recog's own). The size of PNG, JPEG,
    GIF, BMP, WebP and TIFF files is read from their header, so an oversized one is refused before
    it is decoded; other formats are checked after decoding (see ``recog.data.image_header``).
    """
    data = read_image_file(path)
    size = image_size(data)
    if size is not None:
        _check_pixels(path, *size, max_pixels)
    if data.startswith(JPEG_SOI) and jpeg_is_truncated(data):
        raise BadImageError(path, "truncated: the JPEG has no end-of-image marker")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as e:
        raise BadImageError(path, f"cannot decode: {str(e).strip().splitlines()[-1]}") from None
    if image is None:
        raise BadImageError(path, "cannot decode: corrupt, truncated or not an image format OpenCV reads")
    _check_pixels(path, image.shape[1], image.shape[0], max_pixels)
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
    if not all(s > 0 for s in std):  # also refuses nan
        raise ConfigError(f"data.std must be positive, got {list(std)}")
    return Transform(int(image_size), tuple(map(float, mean)), tuple(map(float, std)),
                     flip=bool(train and hflip))
