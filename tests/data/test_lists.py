import os
import re

import cv2
import numpy as np
import pytest

from recog.data import Sample, load_lists, read_image_list
from recog.data.lists import MAX_LABEL, parse_label
from recog.errors import DataError


def _write(path, text):
    path.write_text(text)
    return str(path)


def _images(root, *names):
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / name), np.zeros((4, 4, 3), np.uint8))


def _problem_lines(message):
    return [int(n) for n in re.findall(r"line (\d+):", message)]


def test_read_image_list_parses_paths_labels_comments_and_blanks(tmp_path):
    _images(tmp_path, "a/1.png", "b/2.png")
    list_file = _write(tmp_path / "train.txt", "# comment\n\na/1.png 3\n  b/2.png\t0  \n")
    samples = read_image_list(list_file, str(tmp_path))
    assert samples == [Sample(str(tmp_path / "a/1.png"), 3), Sample(str(tmp_path / "b/2.png"), 0)]
    assert all(os.path.isabs(s.path) for s in samples)


def test_byte_order_mark_and_crlf_line_ends_are_accepted(tmp_path):
    _images(tmp_path, "a.png", "b.png")
    (tmp_path / "train.txt").write_bytes("\ufeffa.png 1\r\nb.png 2\r\n".encode("utf-8"))
    samples = read_image_list(str(tmp_path / "train.txt"), str(tmp_path))
    assert [s.label for s in samples] == [1, 2]


def test_every_problem_is_reported_at_once_with_line_numbers(tmp_path):
    _images(tmp_path, "ok.png", "dup.png", "sub/x.png")
    outside = tmp_path.parent / "outside.png"
    lines = [
        "ok.png 1",  # 1 fine
        "only_path",  # 2 one field
        "dup.png cat",  # 3 not an integer
        "dup.png -2",  # 4 negative
        "a b c",  # 5 three fields
        "dup.png 4",  # 6 fine (first listing of dup.png)
        "sub/../dup.png 4",  # 7 the same file again
        "gone.png 0",  # 8 missing
        "../outside.png 0",  # 9 leaves the root
        f"{outside} 0",  # 10 absolute
        f"dup.png {MAX_LABEL + 1}",  # 11 label too large
        "sub/x.png \u0663",  # 12 a non-ASCII digit
        "sub/x.png 1_0",  # 13 Python would read 10
        "sub 5",  # 14 a folder
    ]
    list_file = _write(tmp_path / "bad.txt", "\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        read_image_list(list_file, str(tmp_path))
    msg = str(err.value)
    assert list_file in msg and "\n" not in msg
    assert _problem_lines(msg) == [2, 3, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14]
    for fragment in (
        "1 fields",
        "not an integer",
        "is negative",
        "3 fields",
        "listed again (first on line 6)",
        "gone.png' does not exist",
        "leaves the dataset root",
        "absolute path",
        f"is over {MAX_LABEL}",
        "'sub' is not a file",
    ):
        assert fragment in msg, fragment


def test_many_problems_are_capped_at_20_with_a_count(tmp_path):
    list_file = _write(tmp_path / "bad.txt", "bad\n" * 25)
    with pytest.raises(DataError, match="25 problem.* and 5 more") as err:
        read_image_list(list_file, str(tmp_path))
    assert _problem_lines(str(err.value)) == list(range(1, 21))


def test_a_list_whose_images_are_all_missing_points_at_the_root(tmp_path):
    list_file = _write(tmp_path / "train.txt", "a.png 0\nb.png 1\n")
    with pytest.raises(DataError, match=r"none of the 2 listed images exist, e\.g\. .*a\.png.*check the dataset root"):
        read_image_list(list_file, str(tmp_path))


def test_missing_and_unreadable_list_files_are_named(tmp_path):
    with pytest.raises(DataError, match="nope.txt does not exist"):
        read_image_list(str(tmp_path / "nope.txt"), str(tmp_path))
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError, match="cannot read image list .*binary.txt"):
        read_image_list(str(tmp_path / "binary.txt"), str(tmp_path))


@pytest.mark.parametrize("text, label", [("0", 0), ("7", 7), ("007", 7), ("-0", 0), (str(MAX_LABEL), MAX_LABEL)])
def test_parse_label_accepts(text, label):
    assert parse_label(text) == (label, None)


@pytest.mark.parametrize("text", ["", "x", "1.5", "+1", "1_0", "\u0663", "-3", str(MAX_LABEL + 1), "9" * 5000])
def test_parse_label_refuses(text):
    label, problem = parse_label(text)
    assert label is None and problem and len(problem) < 200


def test_load_lists(tmp_path):
    _images(tmp_path, "a.png", "b.png", "c.png")
    _write(tmp_path / "train.txt", "a.png 7\nb.png 9\n")
    _write(tmp_path / "query.txt", "c.png 1\n")
    splits = load_lists(str(tmp_path), "train.txt", "query.txt", mirror_invariant=False)
    assert [s.label for s in splits.train] == [7, 9]
    assert splits.train_labels_contiguous() == [0, 1]
    assert splits.num_train_classes == 2
    assert splits.gallery is None and not splits.mirror_invariant
    splits = load_lists(str(tmp_path), str(tmp_path / "train.txt"), "query.txt", "query.txt")
    assert splits.gallery == splits.query


def test_load_lists_reports_the_problems_of_all_lists_together(tmp_path):
    with pytest.raises(DataError, match="dataset root .*missing does not exist"):
        load_lists(str(tmp_path / "missing"), "train.txt", "query.txt")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(DataError, match="dataset root .*a_file is a file, not a folder"):
        load_lists(str(tmp_path / "a_file"), "train.txt", "query.txt")
    _images(tmp_path, "a.png")
    _write(tmp_path / "train.txt", "a.png 0\ngone.png 0\n")
    _write(tmp_path / "query.txt", "")
    _write(tmp_path / "gallery.txt", "a.png x\n")
    with pytest.raises(DataError) as err:
        load_lists(str(tmp_path), "train.txt", "query.txt", "gallery.txt")
    msg = str(err.value)
    assert msg.startswith("3 problem(s)")
    assert re.search(r"train\.txt .*line 2: image 'gone\.png' does not exist", msg)
    assert re.search(r"query\.txt .*lists no images", msg)
    assert re.search(r"gallery\.txt .*line 1: label 'x' is not an integer", msg)
