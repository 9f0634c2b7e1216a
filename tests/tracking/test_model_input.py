"""The images the MLflow Models take: every accepted form gives the same pixels, everything else is an
InputError (HTTP 400) that names the image and the problem, never a cast."""

import base64
import struct
import zlib

import cv2
import numpy as np
import pandas as pd
import pytest

from recog.tracking import model_input
from recog.tracking.model_input import InputError, image_batch

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (2, 9, 7, 3), dtype=np.uint8)


def encoded(image, ext=".png", **params):
    flags = [cv2.IMWRITE_WEBP_QUALITY, 101] if ext == ".webp" else []
    ok, data = cv2.imencode(ext, image[:, :, ::-1], flags)
    assert ok
    return data.tobytes()


PNGS = [encoded(image) for image in IMAGES]
B64 = [base64.b64encode(data).decode() for data in PNGS]


def decoded(value):
    return image_batch(value).decoded()


@pytest.mark.parametrize(
    "value",
    [
        IMAGES,  # uint8 [N, H, W, 3]
        list(IMAGES),
        IMAGES.tolist(),  # JSON nested lists (int64 after parsing)
        PNGS,
        B64,
        [base64.encodebytes(data).decode() for data in PNGS],  # MLflow's own encoding: line breaks
        ["data:image/png;base64," + text for text in B64],
        {"image": B64},
        {"image": PNGS},
        {"pixels": IMAGES.tolist()},
        [{"image": text} for text in B64],
        [{"pixels": image.tolist()} for image in IMAGES],
        pd.DataFrame({"image": PNGS}),
        pd.Series(PNGS),
        np.array(PNGS, dtype=object),
    ],
    ids=lambda v: type(v).__name__,
)
def test_every_accepted_form_gives_the_same_pixels(value):
    got = decoded(value)
    assert len(got) == 2 and all(image.dtype == np.uint8 for image in got)
    np.testing.assert_array_equal(np.stack(got), IMAGES)


def test_one_image_alone_and_images_of_different_sizes():
    np.testing.assert_array_equal(decoded(IMAGES[0])[0], IMAGES[0])
    np.testing.assert_array_equal(decoded(PNGS[0])[0], IMAGES[0])
    small = IMAGES[0][:4, :5]
    got = decoded([IMAGES[0].tolist(), small.tolist()])
    assert [g.shape for g in got] == [(9, 7, 3), (4, 5, 3)]


def test_jpeg_and_webp_files_decode():
    smooth = np.broadcast_to(np.linspace(0, 255, 16, dtype=np.uint8)[None, :, None], (16, 16, 3)).copy()
    for ext in (".jpg", ".webp"):
        (image,) = decoded([encoded(smooth, ext)])
        assert image.shape == (16, 16, 3) and np.abs(image.astype(int) - smooth).max() <= 8


def test_grayscale_and_alpha_files_become_rgb():
    gray = cv2.imencode(".png", IMAGES[0][:, :, 0])[1].tobytes()
    rgba = cv2.imencode(".png", np.dstack([IMAGES[0][:, :, ::-1], np.full((9, 7), 255, np.uint8)]))[1].tobytes()
    assert decoded([gray])[0].shape == (9, 7, 3)
    np.testing.assert_array_equal(decoded([rgba])[0], IMAGES[0])


def png_header(width, height):
    """A PNG whose IHDR claims ``width x height`` (no pixel data: refused before decoding)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


@pytest.mark.parametrize(
    "value, message",
    [
        ((IMAGES / 255.0).tolist(), r"image 0: pixels must be integers 0-255 \(uint8\), got float64 values"),
        (IMAGES.astype(np.float32), "got float32 values: never rounded or cast"),
        ([[[[0.5, 0.5, 0.5]]]], "got float64"),
        (IMAGES.astype(np.int64) + 1, r"pixel values must be 0-255, got 1 to 256"),
        (-IMAGES.astype(np.int16) - 1, "pixel values must be 0-255"),
        (IMAGES.astype(bool), "must be integers"),
        (IMAGES[..., :1], r"RGB \[H, W, 3\], got shape \[9, 7, 1\]"),
        (
            IMAGES[0, 0],
            r"pixels must be RGB images \[H, W, 3\] or a batch \[N, H, W, 3\], got an array of shape \[7, 3\]",
        ),
        (IMAGES[None], "got an array of shape"),
        (np.zeros((1, 0, 5, 3), np.uint8), "an empty image"),
        (["not base64!"], r"image 0: a string that is not base64 \('not base64!'"),
        (
            [base64.b64encode(b"GIF89a" + bytes(40)).decode()],
            r"image 0: not a PNG, JPEG or WebP file \(it starts with b'GIF89a",
        ),
        ([PNGS[0], b"hello"], "image 1: not a PNG, JPEG or WebP file"),
        ([PNGS[0][: len(PNGS[0]) // 2]], "image 0: cannot decode"),
        ([png_header(10_000, 10_000)], "image 0: 10000 x 10000 = 100000000 pixels is over the limit of 40000000"),
        ([], "no images in the input"),
        ({"image": B64, "pixels": IMAGES.tolist()}, r"give one column, 'image' .* or 'pixels'"),
        ({"images": B64}, r"got the column\(s\) \['images'\]"),
        ([{"img": B64[0]}], "image 0: a record must have one key"),
        (pd.DataFrame({"a": [1], "b": [2]}), r"got the column\(s\) \['a', 'b'\]"),
        (3.5, "cannot read images from a float"),
        ([None], "image 0: not an image file or a pixel array"),
    ],
)
def test_anything_else_is_an_input_error_naming_the_problem(value, message):
    with pytest.raises(InputError, match=message) as error:
        decoded(value)
    assert error.value.get_http_status_code() == 400


def test_too_many_images_in_one_request(monkeypatch):
    monkeypatch.setattr(model_input, "MAX_IMAGES", 3)
    with pytest.raises(InputError, match="4 images in one request: at most 3"):
        image_batch(PNGS * 2)


def test_pixel_arrays_over_the_limit_are_refused(monkeypatch):
    monkeypatch.setattr(model_input, "MAX_PIXELS", 62)
    with pytest.raises(InputError, match="over the limit of 62"):
        image_batch(IMAGES)


def test_the_message_is_the_reason_even_after_mlflow_prefixes_the_request():
    error = InputError("image 0: not a PNG, JPEG or WebP file")
    error.message = f"Failed to predict data '{IMAGES.tolist()}'. \nError: {error.message}"  # what the server does
    assert error.message == "image 0: not a PNG, JPEG or WebP file"
    assert '"message": "image 0: not a PNG, JPEG or WebP file"' in error.serialize_as_json()


def test_files_are_decoded_a_batch_at_a_time():
    batch = image_batch(PNGS * 3)
    sizes = [len(images) for images in batch.batches(4)]
    assert sizes == [4, 2] and all(isinstance(item, bytes) for item in batch.items)
