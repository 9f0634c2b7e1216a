"""The images recog's MLflow Models take, checked: encoded image files or uint8 pixel arrays.

In Python (``model.predict(x)``) and over HTTP (the JSON body ``{"inputs": x}`` posted to
``mlflow models serve``), ``x`` is one of:

* encoded image files, PNG, JPEG or WebP: ``bytes`` in Python, base64 strings in JSON (a
  ``data:image/...;base64,`` prefix is allowed), as a list ``[f1, f2, ...]``, a column
  ``{"image": [f1, ...]}`` (or a pandas DataFrame with an ``image`` column), records
  ``[{"image": f1}, ...]``, or one file alone;
* pixel arrays, RGB ``[H, W, 3]`` of integers 0-255: a numpy array ``uint8 [N, H, W, 3]`` (or
  one ``[H, W, 3]`` image), nested lists in JSON, a list of images of different sizes, or the
  same under the column name ``pixels``.

Everything else is an ``InputError`` naming the image and the problem (``mlflow models serve``
answers it with HTTP 400): floating-point or out-of-range pixels (never rounded or cast), the
wrong rank or channel count, bytes that are not base64 or not a PNG / JPEG / WebP file, an
undecodable file, an image over ``MAX_PIXELS`` (checked from the file's header before decoding),
no images, more than ``MAX_IMAGES``. Images are decoded lazily, a batch at a time
(``ImageBatch.decoded``), so memory holds one batch of decoded images, not the request's.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from recog.data.image_header import PNG_SIGNATURE, image_size
from recog.errors import BadImageError

MAX_PIXELS = 40_000_000  # per image (8000 x 5000): a larger one is refused before it is decoded
MAX_IMAGES = 4096  # per request
COLUMNS = ("image", "pixels")  # encoded files, pixel arrays
FORMATS = "PNG, JPEG or WebP"


class InputError(MlflowException, ValueError):
    """Input that is not images as this model takes them (HTTP 400 from ``mlflow models serve``).

    MLflow's scoring server prefixes ``message`` with the repr of the whole request (megabytes for
    a batch of pixel lists): the message stays the reason alone."""

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._reason

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_reason"):
            self._reason = value


class ImageBatch:
    """The images of one request, each an encoded file (``bytes``) or a pixel array, checked for
    their form; ``decoded(start, stop)`` gives ``[H, W, 3] uint8`` RGB images."""

    def __init__(self, items: list):
        if not items:
            raise InputError("no images in the input: give at least one (see the model's signature)")
        if len(items) > MAX_IMAGES:
            raise InputError(f"{len(items)} images in one request: at most {MAX_IMAGES}; split the request")
        self.items = [_checked(item, number) for number, item in enumerate(items)]

    def __len__(self) -> int:
        return len(self.items)

    def decoded(self, start: int = 0, stop: int | None = None) -> list[np.ndarray]:
        return [_decode(item, number) for number, item in enumerate(self.items[start:stop], start)]

    def batches(self, size: int) -> Iterator[list[np.ndarray]]:
        for start in range(0, len(self.items), size):
            yield self.decoded(start, start + size)


def image_batch(model_input) -> ImageBatch:
    """The images of ``model_input`` in any accepted form (module docstring); ``InputError`` otherwise."""
    return ImageBatch(_items(model_input))


def _items(value) -> list:
    import pandas as pd

    if isinstance(value, pd.Series):
        value = value.tolist()
    if isinstance(value, pd.DataFrame):
        _check_columns(list(value.columns))
        return list(value[value.columns[0]])
    if isinstance(value, dict):
        _check_columns(list(value))
        column = next(iter(value.values()))
        return _items_of_column(column)
    if isinstance(value, (bytes, str)):
        return [value]
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "OSU":
            return list(value.reshape(-1)) if value.ndim <= 1 else _refuse_array(value)
        return _split_pixels(value)
    if isinstance(value, (list, tuple)):
        if not value:
            return []
        if all(isinstance(item, dict) for item in value):
            return [_record(item, number) for number, item in enumerate(value)]
        if all(isinstance(item, (bytes, str)) for item in value):
            return list(value)
        return _pixel_list(value)
    raise InputError(
        f"cannot read images from a {type(value).__name__}: give encoded {FORMATS} files or uint8 [N, H, W, 3] pixels"
    )


def _items_of_column(column) -> list:
    if isinstance(column, (bytes, str)):
        return [column]
    if isinstance(column, np.ndarray) and column.dtype.kind not in "OSU":
        return _split_pixels(column)
    if isinstance(column, (list, tuple, np.ndarray)):
        return list(column) if all(isinstance(c, (bytes, str)) for c in column) else _pixel_list(list(column))
    raise InputError(f"a column of images must be a list, got {type(column).__name__}")


def _check_columns(columns: list) -> None:
    if len(columns) != 1 or columns[0] not in COLUMNS:
        raise InputError(
            f"got the column(s) {[str(c) for c in columns]}: give one column, 'image' (encoded {FORMATS} "
            "files, base64 in JSON) or 'pixels' (uint8 [H, W, 3] arrays)"
        )


def _record(item: dict, number: int):
    if len(item) != 1 or next(iter(item)) not in COLUMNS:
        raise InputError(f"image {number}: a record must have one key, 'image' or 'pixels'; got {sorted(item)}")
    return next(iter(item.values()))


def _pixel_list(value: list) -> list:
    """Nested lists: one batch array when regular, else one image per element."""
    try:
        array = np.asarray(value)
    except ValueError:  # ragged: images of different sizes
        return [np.asarray(item) if not isinstance(item, (bytes, str)) else item for item in value]
    if array.dtype == object:
        return [np.asarray(item) if not isinstance(item, (bytes, str)) else item for item in value]
    return _split_pixels(array)


def _split_pixels(array: np.ndarray) -> list:
    if array.ndim == 3:
        return [array]
    if array.ndim == 4:
        return list(array)
    return _refuse_array(array)


def _refuse_array(array: np.ndarray):
    raise InputError(
        f"pixels must be RGB images [H, W, 3] or a batch [N, H, W, 3], got an array of shape {list(array.shape)}"
    )


def _checked(item, number: int):
    """``bytes`` of an encoded file (base64 decoded, format checked) or a checked pixel array."""
    if isinstance(item, str):
        item = _from_base64(item, number)
    if isinstance(item, (bytes, bytearray, memoryview, np.bytes_)):
        return _check_file(bytes(item), number)
    array = np.asarray(item)
    if array.dtype == object:
        raise InputError(f"image {number}: not an image file or a pixel array (got {type(item).__name__})")
    return _check_pixels(array, number)


def _from_base64(text: str, number: int) -> bytes:
    if text.startswith("data:") and ";base64," in text[:100]:
        text = text.split(";base64,", 1)[1]
    try:  # line breaks allowed (MLflow's own examples wrap base64 at 76 characters)
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InputError(
            f"image {number}: a string that is not base64 ({text[:24]!r}...): send each file's bytes "
            "base64-encoded, e.g. $(base64 -w0 image.png)"
        ) from None


def _check_file(data: bytes, number: int) -> bytes:
    if not (data.startswith(PNG_SIGNATURE) or data.startswith(b"\xff\xd8\xff") or _is_webp(data)):
        raise InputError(f"image {number}: not a {FORMATS} file (it starts with {data[:8]!r})")
    size = image_size(data)
    if size is None:
        raise InputError(f"image {number}: a damaged {FORMATS} header (no image size in it)")
    if size[0] * size[1] > MAX_PIXELS:
        raise InputError(
            f"image {number}: {size[0]} x {size[1]} = {size[0] * size[1]} pixels is over the limit of "
            f"{MAX_PIXELS}: resize it before sending"
        )
    return data


def _is_webp(data: bytes) -> bool:
    return data.startswith(b"RIFF") and data[8:12] == b"WEBP"


def _check_pixels(array: np.ndarray, number: int) -> np.ndarray:
    if array.ndim != 3 or array.shape[-1] != 3:
        raise InputError(f"image {number}: pixels must be RGB [H, W, 3], got shape {list(array.shape)}")
    if not array.shape[0] or not array.shape[1]:
        raise InputError(f"image {number}: an empty image, shape {list(array.shape)}")
    if array.shape[0] * array.shape[1] > MAX_PIXELS:
        raise InputError(
            f"image {number}: {array.shape[1]} x {array.shape[0]} pixels is over the limit of {MAX_PIXELS}"
        )
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind not in "iu":
        raise InputError(
            f"image {number}: pixels must be integers 0-255 (uint8), got {array.dtype} values: never rounded "
            "or cast; send uint8 pixels, or the image file"
        )
    low, high = int(array.min()), int(array.max())
    if low < 0 or high > 255:
        raise InputError(f"image {number}: pixel values must be 0-255, got {low} to {high}")
    return array.astype(np.uint8)


def _decode(item, number: int) -> np.ndarray:
    if isinstance(item, np.ndarray):
        return item
    from recog.data.transforms import decode_image_bytes

    try:
        return decode_image_bytes(item, f"image {number}", MAX_PIXELS)
    except BadImageError as error:
        raise InputError(f"image {number}: {error.reason}") from None
