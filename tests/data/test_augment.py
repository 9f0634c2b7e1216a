"""data.augment: PaddleClas's training augmentations, each deterministic given its seed."""

import numpy as np
import pytest

from recog.data.transforms import (
    Augment,
    build_transform,
    color_jitter,
    pad_and_crop,
    random_erase,
    random_resized_crop,
    rotate,
)
from recog.errors import ConfigError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _image(h=40, w=60, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _coords(h, w):
    """An image whose pixels encode their own position: R = row, G = column."""
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = np.arange(h)[:, None]
    image[..., 1] = np.arange(w)[None, :]
    return image


ALL_ON = dict(random_resized_crop=True, pad_crop=4, rotate_prob=0.5, color_jitter=(0.4, 0.4, 0.4, 0.1), erase_prob=0.5)


@pytest.mark.parametrize(
    "options",
    [
        {"random_resized_crop": True},
        {"pad_crop": 4},
        {"rotate_prob": 1.0},
        {"color_jitter": (0.4, 0.4, 0.4, 0.1)},
        {"erase_prob": 1.0},
        ALL_ON,
    ],
)
def test_each_augmentation_is_seeded(options):
    transform = build_transform(16, MEAN, STD, train=True, hflip=True, augment=options)
    image = _image()
    a = transform(image, np.random.default_rng(7))
    b = transform(image, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    outputs = {transform(image, np.random.default_rng(seed)).tobytes() for seed in range(8)}
    assert len(outputs) >= 4
    assert a.shape == (3, 16, 16) and a.dtype == np.float32


def test_eval_transform_ignores_augment():
    transform = build_transform(16, MEAN, STD, train=False, hflip=True, augment=ALL_ON)
    assert transform.augment is None and not transform.is_random


def test_random_resized_crop_takes_a_region_of_the_allowed_area_and_ratio():
    image = _coords(100, 200)
    for seed in range(30):
        out = random_resized_crop(image, 50, (0.08, 1.0), (3 / 4, 4 / 3), np.random.default_rng(seed))
        assert out.shape == (50, 50, 3)
        rows, cols = out[..., 0].astype(int), out[..., 1].astype(int)
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert 0.08 * 20000 * 0.8 <= h * w <= 20000
        assert 3 / 4 * 0.8 <= w / h <= 4 / 3 * 1.25
    # A scale of exactly 1 and a ratio of exactly 2 on a 1:2 image is the whole image.
    whole = random_resized_crop(image, 50, (1.0, 1.0), (2.0, 2.0), np.random.default_rng(0))
    assert whole[..., 1].min() <= 3 and whole[..., 1].max() >= 195


def test_pad_and_crop_shifts_by_at_most_the_padding():
    image = _coords(20, 20) + 1  # no pixel is black
    for seed in range(20):
        out = pad_and_crop(image, 3, np.random.default_rng(seed))
        assert out.shape == image.shape
        inside = out[..., 2] > 0
        rows = np.nonzero(inside.any(1))[0]
        assert len(rows) >= 17 and (out[inside][:, 0] - 1 <= 19).all()


def test_rotate_by_90_degrees_matches_numpy():
    image = _image(9, 9)
    np.testing.assert_array_equal(rotate(image, 90.0), np.rot90(image))  # counter-clockwise


def test_color_jitter_brightness_only_scales():
    image = np.full((4, 4, 3), 100, np.uint8)
    out = color_jitter(image, (0.5, 0, 0, 0), np.random.default_rng(3)).astype(int)
    assert len(np.unique(out)) == 1 and 50 <= out[0, 0, 0] <= 150 and out[0, 0, 0] != 100
    grey = np.full((4, 4, 3), 77, np.uint8)
    out = color_jitter(grey, (0, 0, 0.9, 0.3), np.random.default_rng(1))  # saturation and hue keep grey
    assert np.abs(out.astype(int) - 77).max() <= 1


def test_random_erase_area_and_fill():
    for seed in range(20):
        x = np.ones((3, 32, 32), np.float32)
        random_erase(x, (0.02, 0.4), 0.3, (0.0, -1.0, 2.0), np.random.default_rng(seed))
        erased = x[0] == 0
        assert 0.02 * 1024 * 0.7 <= erased.sum() <= 0.4 * 1024 * 1.3
        assert (x[1][erased] == -1).all() and (x[2][erased] == 2).all() and (x[:, ~erased] == 1).all()
        ys, xs = np.nonzero(erased)
        assert erased.sum() == (np.ptp(ys) + 1) * (np.ptp(xs) + 1)  # one rectangle


def test_flip_follows_mirror_invariance_and_the_option():
    image = np.zeros((4, 4, 3), np.uint8)
    image[:, 0] = 255

    def flips(transform):
        return {transform(image, np.random.default_rng(s))[0, 0, 0] < 0 for s in range(20)}

    assert flips(build_transform(4, MEAN, STD, train=True, hflip=True, augment={"hflip": True})) == {True, False}
    assert flips(build_transform(4, MEAN, STD, train=True, hflip=True, augment={"hflip": False})) == {False}
    assert flips(build_transform(4, MEAN, STD, train=True, hflip=False, augment={"hflip": True})) == {False}


@pytest.mark.parametrize(
    "options, message",
    [
        ({"crop_scale": [0.5, 0.2]}, "crop_scale"),
        ({"erase_prob": 1.5}, "erase_prob"),
        ({"color_jitter": [0.4, 0.4, 0.4]}, "color_jitter"),
        ({"pad_crop": -1}, "pad_crop"),
        ({"erasing": 0.5}, "valid keys"),
    ],
)
def test_invalid_options_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        build_transform(8, MEAN, STD, train=True, hflip=True, augment=options)


def test_defaults_are_paddleclas():
    a = Augment()
    assert (a.crop_scale, a.crop_ratio) == ((0.08, 1.0), (0.75, 4 / 3))
    assert (a.erase_area, a.erase_ratio, a.rotate_degrees) == ((0.02, 0.4), 0.3, 90.0)
