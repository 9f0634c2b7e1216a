"""Image decoding and the train / eval pipeline (OpenCV + NumPy, no Paddle)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from omegaconf import OmegaConf

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
        raise BadImageError(
            path,
            f"too large: {width} x {height} = {width * height} pixels is over "
            f"data.max_image_pixels={max_pixels} (a decompression bomb?)",
        )


def decode_image(path: str, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read an image file as ``[H, W, 3] uint8`` RGB (grayscale is repeated to 3 channels).

    Raises ``BadImageError`` (a ``DataError``) naming the path and the reason: missing, unreadable,
    empty, truncated (JPEG without its end marker; other formats fail to decode), not an image
    OpenCV reads, or over ``max_pixels`` (None: no limit of recog's own). The size of PNG, JPEG,
    GIF, BMP, WebP and TIFF files is read from their header, so an oversized one is refused before
    it is decoded; other formats are checked after decoding (see ``recog.data.image_header``).
    """
    return decode_image_bytes(read_image_file(path), path, max_pixels)


def decode_image_bytes(data: bytes, name: str, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """``decode_image`` of a file's bytes (``name`` says which image in messages): ``[H, W, 3] uint8`` RGB."""
    size = image_size(data)
    if size is not None:
        _check_pixels(name, *size, max_pixels)
    if data.startswith(JPEG_SOI) and jpeg_is_truncated(data):
        raise BadImageError(name, "truncated: the JPEG has no end-of-image marker")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as e:
        raise BadImageError(name, f"cannot decode: {str(e).strip().splitlines()[-1]}") from None
    if image is None:
        raise BadImageError(name, "cannot decode: corrupt, truncated or not an image format OpenCV reads")
    _check_pixels(name, image.shape[1], image.shape[0], max_pixels)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


@dataclass(frozen=True)
class Augment:
    """Training augmentation, PaddleClas's operators and parameters; each off unless enabled.

    Applied in this order to the ``[H, W, 3] uint8`` image (all draws from the generator given to
    ``Transform``, so an augmentation is a pure function of its seed):

    - ``random_resized_crop`` (PaddleClas ``RandCropImage``): a crop of area fraction
      ``U(crop_scale)`` of the image (both bounds capped so the crop fits) and aspect ratio
      ``w/h = a^2`` with ``a^2 ~ U(crop_ratio)``, at a uniform position, resized to the output
      size. Otherwise the whole image is resized.
    - ``hflip`` (``RandFlipImage``, flip_code 1): mirror with p=0.5, only where the dataset is
      mirror invariant.
    - ``pad_crop`` > 0 (``Pad`` + ``RandCropImageV2``): pad by that many black pixels on each
      side, then crop the output size back at a uniform offset.
    - ``rotate_prob`` > 0 (``RandomRotation``): with that probability rotate by ``U(-d, d)``
      degrees (``d = rotate_degrees``) about the centre, bilinear, black corners.
    - ``color_jitter`` ``[brightness, contrast, saturation, hue]`` (``ColorJitter``): in a random
      order, brightness times ``U(1-b, 1+b)``; contrast blended with the mean grey level by
      ``U(1-c, 1+c)``; saturation blended with the grey image by ``U(1-s, 1+s)``; hue shifted by
      ``U(-h, h)`` of a turn (h <= 0.5). Zero disables a component.
    - ``erase_prob`` > 0 (``RandomErasing``, after normalisation): with that probability, up to
      100 tries to place a rectangle of area fraction ``U(erase_area)`` and aspect ``h/w ~
      U(erase_ratio, 1/erase_ratio)`` inside the image, filled with ``erase_value`` (per channel,
      in normalised units: 0 is the dataset mean colour).
    """

    random_resized_crop: bool = False
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    hflip: bool = True
    pad_crop: int = 0
    rotate_prob: float = 0.0
    rotate_degrees: float = 90.0
    color_jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    erase_prob: float = 0.0
    erase_area: tuple[float, float] = (0.02, 0.4)
    erase_ratio: float = 0.3
    erase_value: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self):
        def pair(name, low, high, values):
            if len(values) != 2 or not low <= values[0] <= values[1] <= high:
                raise ConfigError(
                    f"data.augment.{name} must be [min, max] with {low} <= min <= max <= {high}, got {list(values)}"
                )

        pair("crop_scale", 1e-6, 1.0, self.crop_scale)
        pair("crop_ratio", 1e-3, 1e3, self.crop_ratio)
        pair("erase_area", 0.0, 1.0, self.erase_area)
        for name in ("rotate_prob", "erase_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"data.augment.{name} is a probability in [0, 1], got {getattr(self, name)}")
        if self.pad_crop < 0:
            raise ConfigError(f"data.augment.pad_crop must be >= 0 pixels, got {self.pad_crop}")
        jitter = self.color_jitter
        if len(jitter) != 4 or min(jitter) < 0 or max(jitter[:3]) > 1 or jitter[3] > 0.5:
            raise ConfigError(
                "data.augment.color_jitter is [brightness, contrast, saturation, hue] with the first "
                f"three in [0, 1] and hue in [0, 0.5], got {list(jitter)}"
            )
        if not 0.0 < self.erase_ratio <= 1.0:
            raise ConfigError(f"data.augment.erase_ratio must be in (0, 1], got {self.erase_ratio}")
        if len(self.erase_value) != 3:
            raise ConfigError(f"data.augment.erase_value needs 3 values (R, G, B), got {list(self.erase_value)}")

    @property
    def is_random(self) -> bool:
        return bool(
            self.random_resized_crop
            or self.hflip
            or self.pad_crop
            or self.rotate_prob
            or any(self.color_jitter)
            or self.erase_prob
        )


def random_resized_crop(image: np.ndarray, size: int, scale, ratio, rng: np.random.Generator) -> np.ndarray:
    """PaddleClas's ``RandCropImage``: ``[H, W, 3] -> [size, size, 3]`` (see ``Augment``)."""
    img_h, img_w = image.shape[:2]
    a = np.sqrt(rng.uniform(*ratio))
    w_unit, h_unit = a, 1.0 / a
    bound = min((img_w / img_h) / w_unit**2, (img_h / img_w) / h_unit**2)
    side = np.sqrt(img_w * img_h * rng.uniform(min(scale[0], bound), min(scale[1], bound)))
    w = min(img_w, max(1, int(side * w_unit)))
    h = min(img_h, max(1, int(side * h_unit)))
    x0 = int(rng.integers(0, img_w - w + 1))
    y0 = int(rng.integers(0, img_h - h + 1))
    return cv2.resize(image[y0 : y0 + h, x0 : x0 + w], (size, size), interpolation=cv2.INTER_LINEAR)


def pad_and_crop(image: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    """Pad by ``pad`` black pixels per side, crop the original size back at a uniform offset."""
    h, w = image.shape[:2]
    padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    y0, x0 = int(rng.integers(0, 2 * pad + 1)), int(rng.integers(0, 2 * pad + 1))
    return padded[y0 : y0 + h, x0 : x0 + w]


def rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate counter-clockwise by ``degrees`` about the centre, same size, black corners."""
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), degrees, 1.0)
    return cv2.warpAffine(
        image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0)
    )


def color_jitter(image: np.ndarray, strengths, rng: np.random.Generator) -> np.ndarray:
    """Brightness / contrast / saturation / hue jitter in a random order (see ``Augment``)."""
    x = image.astype(np.float32)
    for op in rng.permutation(4):
        strength = strengths[op]
        if not strength:
            continue
        if op == 3:
            shift = rng.uniform(-strength, strength)
            hsv = cv2.cvtColor(np.clip(x, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV_FULL)
            hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(round(shift * 256))) % 256
            x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL).astype(np.float32)
            continue
        factor = rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength)
        grey = x @ np.float32([0.299, 0.587, 0.114])  # [H, W]
        if op == 0:
            x = x * factor
        elif op == 1:
            x = factor * x + (1.0 - factor) * grey.mean()
        else:
            x = factor * x + (1.0 - factor) * grey[..., None]
        x = np.clip(x, 0.0, 255.0)
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def random_erase(x: np.ndarray, area, ratio: float, value, rng: np.random.Generator) -> np.ndarray:
    """``x [3, H, W]``: one rectangle (see ``Augment``) set to ``value`` per channel, in place."""
    _, h_img, w_img = x.shape
    for _ in range(100):
        target = rng.uniform(*area) * h_img * w_img
        aspect = rng.uniform(ratio, 1.0 / ratio)
        h = int(round(np.sqrt(target * aspect)))
        w = int(round(np.sqrt(target / aspect)))
        if 0 < h < h_img and 0 < w < w_img:
            y0, x0 = int(rng.integers(0, h_img - h + 1)), int(rng.integers(0, w_img - w + 1))
            x[:, y0 : y0 + h, x0 : x0 + w] = np.asarray(value, np.float32)[:, None, None]
            break
    return x


@dataclass(frozen=True)
class Transform:
    """``[H, W, 3] uint8 RGB -> [3, S, S] float32``, normalised per RGB channel.

    Steps: resize to ``S x S`` (bilinear); if ``flip`` a horizontal flip with p=0.5; scale to
    [0, 1]; ``(x - mean) / std``; HWC -> CHW. With ``augment`` (training), its steps replace the
    resize and flip and add the others (see ``Augment``); its ``hflip`` counts only with ``flip``.
    """

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    flip: bool = False
    augment: Augment | None = None

    @property
    def is_random(self) -> bool:
        return self.flip or (self.augment is not None and self.augment.is_random)

    def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """``rng`` drives the augmentation (a fresh unseeded one if None)."""
        size = self.image_size
        if self.is_random and rng is None:
            rng = np.random.default_rng()
        aug = self.augment
        if aug is not None and aug.random_resized_crop:
            image = random_resized_crop(image, size, aug.crop_scale, aug.crop_ratio, rng)
        elif image.shape[:2] != (size, size):
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
        if self.flip and (aug is None or aug.hflip) and rng.random() < 0.5:
            image = image[:, ::-1]
        if aug is not None:
            if aug.pad_crop:
                image = pad_and_crop(image, aug.pad_crop, rng)
            if aug.rotate_prob and rng.random() < aug.rotate_prob:
                image = rotate(np.ascontiguousarray(image), rng.uniform(-aug.rotate_degrees, aug.rotate_degrees))
            if any(aug.color_jitter):
                image = color_jitter(image, aug.color_jitter, rng)
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        x = (image.astype(np.float32) * np.float32(1 / 255) - mean) / std
        x = np.ascontiguousarray(x.transpose(2, 0, 1))
        if aug is not None and aug.erase_prob and rng.random() < aug.erase_prob:
            x = random_erase(x, aug.erase_area, aug.erase_ratio, aug.erase_value, rng)
        return x


def build_augment(cfg) -> Augment | None:
    """``Augment`` from a ``data.augment`` mapping (None or empty: no augmentation beyond flips)."""
    if not cfg:
        return None
    if OmegaConf.is_config(cfg):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    values = dict(cfg)
    for name in ("crop_scale", "crop_ratio", "color_jitter", "erase_area", "erase_value"):
        if name in values:
            values[name] = tuple(float(v) for v in values[name])
    try:
        return Augment(**values)
    except TypeError as error:
        raise ConfigError(f"data.augment: {error}; valid keys: {', '.join(Augment.__dataclass_fields__)}") from None


def build_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float], train: bool, hflip: bool, augment=None
) -> Transform:
    """Eval transform if not ``train``; random horizontal flips only if ``train and hflip``;
    ``augment`` (an ``Augment`` or a ``data.augment`` mapping) only if ``train``."""
    if int(image_size) != image_size or image_size < 1:
        raise ConfigError(f"data.image_size must be a positive integer, got {image_size}")
    if len(mean) != 3 or len(std) != 3:
        raise ConfigError(f"data.mean and data.std need 3 values (R, G, B), got {list(mean)} and {list(std)}")
    if not all(s > 0 for s in std):  # also refuses nan
        raise ConfigError(f"data.std must be positive, got {list(std)}")
    if augment is not None and not isinstance(augment, Augment):
        augment = build_augment(augment)
    return Transform(
        int(image_size),
        tuple(map(float, mean)),
        tuple(map(float, std)),
        flip=bool(train and hflip),
        augment=augment if train else None,
    )
