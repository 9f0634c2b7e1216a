"""Header sizes agree with what OpenCV decodes; malformed headers give None, never an exception."""

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recog.data.image_header import image_size, jpeg_is_truncated

FORMATS = [
    (".png", 3, []),
    (".png", 1, []),
    (".jpg", 3, []),
    (".jpg", 3, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
    (".bmp", 3, []),
    (".bmp", 1, []),
    (".webp", 3, [cv2.IMWRITE_WEBP_QUALITY, 101]),  # lossless: VP8L
    (".webp", 3, [cv2.IMWRITE_WEBP_QUALITY, 50]),
    (".webp", 4, [cv2.IMWRITE_WEBP_QUALITY, 50]),  # VP8, VP8X
    (".tiff", 3, []),
    (".tiff", 1, []),
]


def _encode(ext, channels, params, height, width):
    pixels = np.random.default_rng(height * width).integers(0, 256, (height, width, channels), dtype=np.uint8)
    ok, data = cv2.imencode(ext, pixels[..., 0] if channels == 1 else pixels, params)
    assert ok
    return data.tobytes()


@pytest.mark.parametrize("ext, channels, params", FORMATS)
@pytest.mark.parametrize("height, width", [(1, 1), (37, 53), (300, 17)])
def test_header_size_matches_the_decoded_image(ext, channels, params, height, width):
    data = _encode(ext, channels, params, height, width)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image_size(data) == (width, height) == (decoded.shape[1], decoded.shape[0])


def test_gif_logical_screen_size():
    assert image_size(b"GIF89a" + (640).to_bytes(2, "little") + (480).to_bytes(2, "little") + b"\x00" * 8) == (640, 480)


def test_jpeg_end_marker_check():
    data = _encode(".jpg", 3, [], 40, 40)
    assert not jpeg_is_truncated(data)
    assert not jpeg_is_truncated(data + b"trailing camera data")
    for cut in (2, 100, len(data) // 2):
        assert jpeg_is_truncated(data[:-cut])
    # A thumbnail's end marker inside an APP segment (before the scan) does not count.
    thumbnail = b"\xff\xe1" + (2 + 4).to_bytes(2, "big") + b"\xff\xd9\xff\xd9"
    assert jpeg_is_truncated(data[:2] + thumbnail + data[2:-2])


def test_unknown_formats_and_short_headers_give_none():
    assert image_size(b"P6\n4 4\n255\n" + b"\x00" * 48) is None  # PPM: checked after decoding
    png = _encode(".png", 3, [], 5, 5)
    for data in (
        b"",
        png[:20],
        b"\xff\xd8",
        b"\xff\xd8\xff\xc0\x00",
        b"BM" + b"\x00" * 10,
        b"RIFF\x00\x00\x00\x00WEBP",
        b"II*\x00\xff\xff\xff\xff",
    ):
        assert image_size(data) is None


@settings(derandomize=True, max_examples=300, deadline=None, database=None)
@given(
    st.sampled_from(
        [b"\x89PNG\r\n\x1a\n", b"\xff\xd8", b"GIF89a", b"BM", b"RIFF\x00\x00\x00\x00WEBP", b"II*\x00", b"MM\x00*", b""]
    ),
    st.binary(max_size=200),
)
def test_garbage_after_a_signature_never_raises(signature, rest):
    size = image_size(signature + rest)
    assert size is None or (len(size) == 2 and min(size) >= 0)
    if signature == b"\xff\xd8":
        assert isinstance(jpeg_is_truncated(signature + rest), bool)
