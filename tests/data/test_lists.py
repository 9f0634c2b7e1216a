import os

import cv2
import numpy as np
import pytest

from recog.data import Sample, load_lists, read_image_list
from recog.errors import DataError


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_read_image_list_parses_paths_labels_comments_and_blanks(tmp_path):
    list_file = _write(tmp_path / "train.txt", "# comment\n\na/1.png 3\n  b/2.png\t0  \n")
    samples = read_image_list(list_file, str(tmp_path))
    assert samples == [Sample(str(tmp_path / "a/1.png"), 3), Sample(str(tmp_path / "b/2.png"), 0)]
    assert all(os.path.isabs(s.path) for s in samples)


def test_malformed_lines_are_all_reported_with_file_and_line_numbers(tmp_path):
    list_file = _write(tmp_path / "bad.txt", "ok.png 1\nonly_path\nx.png cat\ny.png -2\na b c\n")
    with pytest.raises(DataError) as err:
        read_image_list(list_file, str(tmp_path))
    msg = str(err.value)
    assert list_file in msg
    for n in (2, 3, 4, 5):
        assert f"line {n}:" in msg
    assert "line 1:" not in msg
    assert "not an integer" in msg and "negative" in msg


def test_many_malformed_lines_are_truncated(tmp_path):
    list_file = _write(tmp_path / "bad.txt", "bad\n" * 15)
    with pytest.raises(DataError, match="and 5 more") as err:
        read_image_list(list_file, str(tmp_path))
    assert "line 10:" in str(err.value) and "line 11:" not in str(err.value)


def test_missing_list_file_is_named(tmp_path):
    with pytest.raises(DataError, match="nope.txt"):
        read_image_list(str(tmp_path / "nope.txt"), str(tmp_path))


def test_load_lists(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        cv2.imwrite(str(tmp_path / name), np.zeros((4, 4, 3), np.uint8))
    _write(tmp_path / "train.txt", "a.png 7\nb.png 9\n")
    _write(tmp_path / "query.txt", "c.png 1\n")
    splits = load_lists(str(tmp_path), "train.txt", "query.txt", mirror_invariant=False)
    assert [s.label for s in splits.train] == [7, 9]
    assert splits.train_labels_contiguous() == [0, 1]
    assert splits.num_train_classes == 2
    assert splits.gallery is None and not splits.mirror_invariant
    splits = load_lists(str(tmp_path), str(tmp_path / "train.txt"), "query.txt", "query.txt")
    assert splits.gallery == splits.query


def test_load_lists_errors(tmp_path):
    with pytest.raises(DataError, match="dataset root .*missing does not exist"):
        load_lists(str(tmp_path / "missing"), "train.txt", "query.txt")
    _write(tmp_path / "train.txt", "gone.png 0\n")
    _write(tmp_path / "query.txt", "")
    with pytest.raises(DataError, match="gone.png"):
        load_lists(str(tmp_path), "train.txt", "query.txt")
