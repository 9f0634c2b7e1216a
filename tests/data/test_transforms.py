import cv2
import numpy as np
import pytest

from recog.data import build_transform, decode_image
from recog.errors import ConfigError, DataError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_decode_gives_rgb_and_three_channels_for_gray(tmp_path):
    bgr = np.zeros((5, 7, 3), np.uint8)
    bgr[..., 2] = 200  # red in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    cv2.imwrite(str(tmp_path / "gray.png"), np.full((5, 7), 9, np.uint8))
    rgb = decode_image(str(tmp_path / "red.png"))
    assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 0] == 200).all() and (rgb[..., 2] == 0).all()
    gray = decode_image(str(tmp_path / "gray.png"))
    assert gray.shape == (5, 7, 3) and (gray == 9).all()


def test_decode_failure_names_the_path(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\x00garbage\xff" * 10)
    with pytest.raises(DataError, match="broken.jpg"):
        decode_image(str(path))
    with pytest.raises(DataError, match="absent.png"):
        decode_image(str(tmp_path / "absent.png"))


def test_shape_dtype_and_normalisation():
    image = np.empty((10, 6, 3), np.uint8)
    image[...] = (255, 0, 128)
    out = build_transform(4, MEAN, STD, train=False, hflip=True)(image)
    assert out.shape == (3, 4, 4) and out.dtype == np.float32 and out.flags.c_contiguous
    expected = (np.array([1.0, 0.0, 128 / 255]) - MEAN) / STD
    np.testing.assert_allclose(out[:, 0, 0], expected, rtol=1e-5)
    np.testing.assert_allclose(out.mean(axis=(1, 2)), expected, rtol=1e-5)


def test_flip_only_when_training_with_hflip():
    image = np.zeros((4, 4, 3), np.uint8)
    image[:, 0] = 255  # bright left column

    def left_bright(transform, seed):
        return transform(image, np.random.default_rng(seed))[0, 0, 0] > 0

    flipping = build_transform(4, MEAN, STD, train=True, hflip=True)
    seen = {left_bright(flipping, seed) for seed in range(20)}
    assert seen == {True, False}
    for train, hflip in ((True, False), (False, True)):
        fixed = build_transform(4, MEAN, STD, train=train, hflip=hflip)
        assert all(left_bright(fixed, seed) for seed in range(20))
    assert left_bright(flipping, 3) == left_bright(flipping, 3)


def test_invalid_config():
    with pytest.raises(ConfigError, match="3 values"):
        build_transform(8, (0.5, 0.5), STD, train=True, hflip=True)
    with pytest.raises(ConfigError, match="image_size"):
        build_transform(0, MEAN, STD, train=True, hflip=True)
