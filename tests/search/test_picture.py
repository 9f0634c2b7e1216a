"""retrieval_grid: size, frame colours, decoding (RGB in, BGR out), failed images, separator."""

import cv2
import numpy as np
import pytest

from recog.search import GalleryIndex, retrieval_grid
from recog.search.picture import BACKGROUND, FAILED_GREY, GREEN, RED, SEPARATOR


def write_image(path, bgr, size=(40, 60)):
    image = np.zeros((size[0], size[1], 3), np.uint8)
    image[:] = bgr
    assert cv2.imwrite(str(path), image)
    return str(path)


def pixel(image, row, col, tile, y, x):
    """BGR of pixel (y, x) inside tile (row, col)."""
    return tuple(int(v) for v in image[row * tile + y, col * tile + x])


@pytest.fixture
def images(tmp_path):
    blue = write_image(tmp_path / "blue.png", (255, 0, 0))
    yellow = write_image(tmp_path / "yellow.png", (0, 255, 255), size=(64, 64))
    magenta = write_image(tmp_path / "magenta.png", (255, 0, 255), size=(90, 30))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    return {
        "blue": blue,
        "yellow": yellow,
        "magenta": magenta,
        "broken": str(broken),
        "missing": str(tmp_path / "missing.png"),
    }


def test_grid_size_frames_and_colours(tmp_path, images):
    results = [
        {
            "query": images["blue"],
            "label": 1,
            "results": [
                {"path": images["yellow"], "label": 1, "score": 0.9, "rank": 1},
                {"path": images["magenta"], "label": 2, "score": 0.5, "rank": 2},
                {"path": images["broken"], "label": 1, "score": 0.1, "rank": 3},
            ],
        },
        {
            "query": images["missing"],
            "label": 2,
            "results": [
                {"path": images["blue"], "label": 1, "score": 0.8, "rank": 1},
            ],
        },
    ]
    thumb, border, k = 64, 4, 4
    tile = thumb + 2 * border
    out = retrieval_grid(
        [r["query"] for r in results],
        results,
        tmp_path / "sub" / "grid.png",
        k=k,
        thumb=thumb,
        query_labels=[1, 2],
        border=border,
    )
    assert out == str(tmp_path / "sub" / "grid.png")
    image = cv2.imread(out, cv2.IMREAD_COLOR)
    assert image is not None
    assert image.shape == (2 * tile, (k + 1) * tile, 3)

    # Frames: same label green, different red, on the frame's corner and edge midpoint.
    assert pixel(image, 0, 1, tile, 0, 0) == GREEN
    assert pixel(image, 0, 1, tile, tile // 2, tile - 1) == GREEN
    assert pixel(image, 0, 2, tile, 1, tile // 2) == RED
    assert pixel(image, 0, 3, tile, tile - 1, 2) == GREEN  # a failed image keeps its frame
    assert pixel(image, 1, 1, tile, 0, 0) == RED
    # Places past the results: white, no frame.
    assert pixel(image, 0, 4, tile, 0, 0) == BACKGROUND
    assert pixel(image, 1, 2, tile, tile // 2, tile // 2) == BACKGROUND
    # Decoded images are written in their own colours (RGB decode -> BGR output).
    assert pixel(image, 0, 0, tile, border + thumb // 2 - 8, border + thumb // 2) == (255, 0, 0)
    assert pixel(image, 0, 1, tile, border + 10, border + thumb // 2) == (0, 255, 255)
    assert pixel(image, 0, 2, tile, border + thumb // 4, border + thumb // 2) == (255, 0, 255)
    # magenta is 90 x 30: letterboxed, white at the sides.
    assert pixel(image, 0, 2, tile, border + thumb // 4, border + 2) == BACKGROUND
    # Undecodable or missing images: grey tiles (off the X's diagonals).
    assert pixel(image, 0, 3, tile, border + thumb // 4, border + thumb // 2) == FAILED_GREY
    assert pixel(image, 1, 0, tile, border + thumb // 4, border + thumb // 2) == FAILED_GREY
    # The X crosses the centre of a failed tile.
    assert pixel(image, 1, 0, tile, border + thumb // 2, border + thumb // 2) != FAILED_GREY
    # The separator in the query tile's right border, on every row.
    assert pixel(image, 0, 0, tile, tile // 2, tile - 1) == SEPARATOR
    assert pixel(image, 1, 0, tile, 1, tile - 1) == SEPARATOR
    assert pixel(image, 0, 0, tile, tile // 2, 0) == BACKGROUND  # no frame around the query


def test_unknown_labels_give_no_frames_and_text_is_optional(tmp_path, images):
    results = [[{"path": images["yellow"], "label": 3}, {"path": images["blue"], "label": None}]]
    out = retrieval_grid([images["blue"]], results, tmp_path / "a.png", k=2, thumb=40, border=3, text=False)
    image = cv2.imread(out)
    tile = 46
    assert image.shape == (tile, 3 * tile, 3)
    assert pixel(image, 0, 1, tile, 0, 0) == BACKGROUND  # query label unknown
    assert pixel(image, 0, 2, tile, 0, 0) == BACKGROUND
    # Without text the bottom of the thumbnail is the image itself.
    assert pixel(image, 0, 1, tile, 3 + 38, 3 + 20) == (0, 255, 255)
    # Labels known on one side only: still no frame.
    out = retrieval_grid(
        [images["blue"]], results, tmp_path / "b.png", k=2, thumb=40, border=3, query_labels=[3], text=True
    )
    image = cv2.imread(out)
    assert pixel(image, 0, 1, tile, 0, 0) == GREEN
    assert pixel(image, 0, 2, tile, 0, 0) == BACKGROUND
    # With text: a black strip along the bottom of the thumbnail.
    assert pixel(image, 0, 1, tile, 3 + 39, 3 + 38) == (0, 0, 0)


def test_grid_from_gallery_index_results(tmp_path, images):
    paths = [images["blue"], images["yellow"], images["magenta"], images["broken"]]
    gallery = np.eye(4, dtype=np.float32)
    index = GalleryIndex.build(gallery, labels=[0, 0, 1, 1], paths=paths)
    queries = np.array([[1, 0.5, 0, 0], [0, 0, 0.2, 1]], np.float32)
    results = index.results(queries, 3, query_paths=paths[:2], query_labels=[0, 1])
    out = retrieval_grid(paths[:2], results, tmp_path / "grid.png", k=3, thumb=48)
    image = cv2.imread(out)
    tile = 48 + 8
    assert image.shape == (2 * tile, 4 * tile, 3)
    # Query 0 (label 0): ranks items 0, 1 (label 0: green), then 2 (label 1: red).
    assert [r["index"] for r in results[0]["results"]] == [0, 1, 2]
    assert [pixel(image, 0, c, tile, 0, 0) for c in (1, 2, 3)] == [GREEN, GREEN, RED]
    # Query 1 (label 1): items 3, 2 (green) then 0 (red); query labels taken from the dicts.
    assert [r["index"] for r in results[1]["results"]] == [3, 2, 0]
    assert [pixel(image, 1, c, tile, 2, 2) for c in (1, 2, 3)] == [GREEN, GREEN, RED]


def test_grid_rejects_bad_arguments(tmp_path, images):
    with pytest.raises(ValueError, match="no queries"):
        retrieval_grid([], [], tmp_path / "x.png")
    with pytest.raises(ValueError, match="result lists"):
        retrieval_grid([images["blue"]], [], tmp_path / "x.png")
    with pytest.raises(ValueError, match="k must be"):
        retrieval_grid([images["blue"]], [[]], tmp_path / "x.png", k=0)
    assert not (tmp_path / "x.png").exists()
