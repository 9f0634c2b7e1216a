"""A PNG grid of retrieval results: one row per query, the query image then its top-k results.

Layout (deterministic size): ``len(query_paths)`` rows and ``k + 1`` columns of square tiles of
``thumb + 2 * border`` pixels, so the image is ``rows * tile`` high and ``(k + 1) * tile``
wide. Each image is shrunk (aspect ratio kept) and centred on a white ``thumb x thumb`` square
inside its tile. The border of a result's tile is ``GREEN`` when its label equals the query's,
``RED`` when it differs, and white (no frame) when either label is unknown. The query tile has
no frame; its right border carries a dark vertical separator (``SEPARATOR``). Images that cannot
be decoded (or have no path) become a grey tile with a dark X; places past a query's results
stay white. With ``text`` the rank and score (or "query", or the query's caption) are written at
the bottom of a tile.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

from recog.data.transforms import decode_image
from recog.errors import DataError
from recog.utils import atomic

log = logging.getLogger(__name__)

__all__ = ["retrieval_grid", "save_retrieval_grid", "GREEN", "RED", "SEPARATOR", "FAILED_GREY", "BACKGROUND"]

# BGR colours, as written to the PNG.
GREEN = (0, 200, 0)
RED = (0, 0, 220)
SEPARATOR = (64, 64, 64)
FAILED_GREY = (160, 160, 160)
BACKGROUND = (255, 255, 255)
_CROSS = (70, 70, 70)
_TEXT = (255, 255, 255)
_TEXT_STRIP = (0, 0, 0)


def retrieval_grid(
    query_paths: Sequence,
    results: Sequence,
    out_png,
    k: int = 5,
    thumb: int = 96,
    query_labels: Sequence | None = None,
    *,
    border: int = 4,
    text: bool = True,
    query_captions: Sequence[str] | None = None,
) -> str:
    """Write the grid of the queries' top-k results to ``out_png``; returns that path (str).

    Args:
        query_paths: Q query image paths (None for an unknown image: grey tile).
        results: Q entries, one per query: a dict with a ``"results"`` list (the output of
            ``GalleryIndex.results``) or directly a list of result dicts, each with ``"path"``
            and optionally ``"label"``, ``"score"``, ``"rank"``; best first. Only the first
            k are drawn.
        out_png: output file (parent directories are created).
        k: result columns.
        thumb: side of an image's square, in pixels.
        query_labels: Q labels, or None to take each query's ``"label"`` from its results dict
            (when it is a dict); a None label means unknown (no frames on that row).
        border: frame width in pixels (>= 1); a tile is ``thumb + 2 * border`` pixels square.
        text: write the rank and score (or "query") at the bottom of each tile.
        query_captions: Q captions of the query tiles instead of "query" (e.g. the query's AP).
    """
    k, thumb, border = _positive(k, "k"), _positive(thumb, "thumb"), _positive(border, "border")
    query_paths = list(query_paths)
    results = list(results)
    if not query_paths:
        raise ValueError("no queries: the grid would be empty")
    if len(results) != len(query_paths):
        raise ValueError(f"{len(query_paths)} query paths but {len(results)} result lists")
    if query_labels is not None:
        query_labels = list(query_labels)
        if len(query_labels) != len(query_paths):
            raise ValueError(f"{len(query_paths)} query paths but {len(query_labels)} query labels")
    if query_captions is not None and len(query_captions) != len(query_paths):
        raise ValueError(f"{len(query_paths)} query paths but {len(query_captions)} query captions")

    tile = thumb + 2 * border
    canvas = np.full((len(query_paths) * tile, (k + 1) * tile, 3), BACKGROUND, dtype=np.uint8)
    show_text = text and thumb >= 32
    for row, (query_path, entry) in enumerate(zip(query_paths, results)):
        if isinstance(entry, Mapping):
            items = list(entry.get("results", []))
            query_label = entry.get("label") if query_labels is None else query_labels[row]
        else:
            items = list(entry)
            query_label = None if query_labels is None else query_labels[row]
        top = row * tile
        # The query tile, with the separator in its right border.
        _paste(canvas, top, 0, thumb, border, _thumbnail(query_path, thumb))
        separator_width = max(1, (border + 1) // 2)
        canvas[top : top + tile, tile - separator_width : tile] = SEPARATOR
        if show_text:
            _label(canvas, top, 0, thumb, border, "query" if query_captions is None else str(query_captions[row]))
        for col, item in enumerate(items[:k], start=1):
            if not isinstance(item, Mapping):
                raise ValueError(f"a result must be a dict with a 'path', got {type(item).__name__}")
            left = col * tile
            label = item.get("label")
            if query_label is not None and label is not None:
                canvas[top : top + tile, left : left + tile] = GREEN if label == query_label else RED
            _paste(canvas, top, left, thumb, border, _thumbnail(item.get("path"), thumb))
            if show_text:
                _label(canvas, top, left, thumb, border, _caption(item, col))

    out_png = os.fspath(out_png)
    ok, encoded = cv2.imencode(".png", canvas)
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 BGR image
        raise DataError(f"OpenCV could not encode the retrieval grid for {out_png}")
    path = Path(out_png)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(path, encoded.tobytes(), what="retrieval picture")  # StorageError on failure
    return out_png


def save_retrieval_grid(query_paths: Sequence, results: Sequence, out_png, **kwargs) -> Path | None:
    """``retrieval_grid`` for a run: the picture is optional, so a failure to draw or write it
    (disk full, ...) is a warning and returns None; the previous picture, if any, is kept whole."""
    try:
        return Path(retrieval_grid(query_paths, results, out_png, **kwargs))
    except Exception as error:  # noqa: BLE001 - never the end of a run
        log.warning("retrieval picture %s not written: %s", out_png, error)
        return None


def _positive(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _thumbnail(path, thumb: int) -> np.ndarray:
    """``[thumb, thumb, 3]`` BGR: the image shrunk into a white square, or a grey tile with an X."""
    image = None
    # A missing file is not decoded at all (OpenCV would log a warning for it).
    if isinstance(path, (str, os.PathLike)) and os.path.isfile(path):
        try:
            image = decode_image(os.fspath(path))
        except (DataError, cv2.error, TypeError, ValueError, OSError):
            image = None
    if image is None or image.size == 0:
        out = np.full((thumb, thumb, 3), FAILED_GREY, dtype=np.uint8)
        thickness = max(1, thumb // 32)
        cv2.line(out, (0, 0), (thumb - 1, thumb - 1), _CROSS, thickness, cv2.LINE_AA)
        cv2.line(out, (0, thumb - 1), (thumb - 1, 0), _CROSS, thickness, cv2.LINE_AA)
        return out
    image = np.ascontiguousarray(image[..., ::-1])  # RGB -> BGR
    height, width = image.shape[:2]
    scale = thumb / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    image = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    out = np.full((thumb, thumb, 3), BACKGROUND, dtype=np.uint8)
    y, x = (thumb - new_h) // 2, (thumb - new_w) // 2
    out[y : y + new_h, x : x + new_w] = image
    return out


def _paste(canvas: np.ndarray, top: int, left: int, thumb: int, border: int, image: np.ndarray) -> None:
    canvas[top + border : top + border + thumb, left + border : left + border + thumb] = image


def _caption(item: Mapping, col: int) -> str:
    rank = item.get("rank", col)
    score = item.get("score")
    if score is None:
        return f"#{rank}"
    if isinstance(score, (int, np.integer)):
        return f"#{rank} {int(score)}"
    return f"#{rank} {float(score):.3f}"


def _label(canvas: np.ndarray, top: int, left: int, thumb: int, border: int, caption: str) -> None:
    """``caption`` in white on a black strip along the bottom of the thumbnail (inside the frame)."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = 0.35 * thumb / 96
    (text_w, text_h), baseline = cv2.getTextSize(caption, font, scale, 1)
    strip = min(thumb, text_h + baseline + 4)
    y0 = top + border + thumb - strip
    x0 = left + border
    canvas[y0 : top + border + thumb, x0 : x0 + thumb] = _TEXT_STRIP
    view = canvas[y0 : top + border + thumb, x0 : x0 + thumb]  # clip the text to the thumbnail
    cv2.putText(view, caption, (2, strip - baseline - 2), font, scale, _TEXT, 1, cv2.LINE_AA)
