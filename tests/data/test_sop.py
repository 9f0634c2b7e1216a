import re

import cv2
import numpy as np
import pytest

from recog.data import load_sop, read_sop_file
from recog.errors import DataError

HEADER = "image_id class_id super_class_id path\n"


def _sop_root(tmp_path, train_rows, test_rows):
    for rows in (train_rows, test_rows):
        for row in rows:
            path = tmp_path / row.split()[3]
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "Ebay_train.txt").write_text(HEADER + "\n".join(train_rows) + "\n")
    (tmp_path / "Ebay_test.txt").write_text(HEADER + "\n".join(test_rows) + "\n")
    return str(tmp_path)


def test_load_sop(tmp_path):
    root = _sop_root(
        tmp_path, ["1 1 1 bicycle_final/111_0.JPG", "2 3 1 bicycle_final/111_1.JPG"], ["3 5 2 chair_final/222_0.JPG"]
    )
    splits = load_sop(root)
    assert [s.label for s in splits.train] == [1, 3]
    assert splits.train[0].path == str(tmp_path / "bicycle_final/111_0.JPG")
    assert splits.train_labels_contiguous() == [0, 1]
    assert [s.label for s in splits.query] == [5]
    assert splits.gallery is None and splits.mirror_invariant


def test_bad_header_and_rows_name_file_and_line(tmp_path):
    _sop_root(tmp_path, ["1 1 1 a.jpg", "5 1 1 d.jpg"], [])
    path = tmp_path / "Ebay_train.txt"
    path.write_text(
        "id class path\n1 1 1 a.jpg\n2 x 1 b.jpg\n3 1 c.jpg\n4 1 1 ../up.jpg\n5 1 1 d.jpg\n"
        "6 1 1 a.jpg\n7 1 -1 e.jpg\n8 1 1 missing.jpg\n"
    )
    with pytest.raises(DataError) as err:
        read_sop_file(str(path), str(tmp_path))
    msg = str(err.value)
    assert str(path) in msg
    assert [int(n) for n in re.findall(r"line (\d+):", msg)] == [1, 3, 4, 5, 7, 8, 9]
    for fragment in (
        "line 1: header",
        "line 3: class_id 'x' is not an integer",
        "line 4: 3 fields",
        "line 5: path '../up.jpg' refused: it leaves the dataset root",
        "line 7: 'a.jpg' is listed again (first on line 2)",
        "line 8: super_class_id '-1' is negative",
        "line 9: image 'missing.jpg' does not exist",
    ):
        assert fragment in msg, fragment


def test_problems_of_both_files_are_reported_together(tmp_path):
    root = _sop_root(tmp_path, ["1 1 1 a.jpg"], ["2 2 1 b.jpg"])
    (tmp_path / "Ebay_train.txt").write_text(HEADER + "1 1 1 a.jpg\n2 1 1 /etc/passwd\n")
    (tmp_path / "Ebay_test.txt").write_text(HEADER + "3 2 x b.jpg\n")
    with pytest.raises(DataError) as err:
        load_sop(root)
    msg = str(err.value)
    assert msg.startswith("2 problem(s)")
    assert re.search(r"Ebay_train\.txt .*line 3: absolute path '/etc/passwd' refused", msg)
    assert re.search(r"Ebay_test\.txt .*line 2: super_class_id 'x' is not an integer", msg)


def test_missing_root_and_files_explain_the_layout(tmp_path):
    with pytest.raises(DataError, match="does not exist; expected the Stanford Online Products"):
        load_sop(str(tmp_path / "nowhere"))
    (tmp_path / "a_file").write_text("x")  # said "does not exist"
    with pytest.raises(DataError, match="a_file is a file, not a folder; expected the Stanford Online Products"):
        load_sop(str(tmp_path / "a_file"))
    (tmp_path / "Ebay_train.txt").write_text(HEADER)
    with pytest.raises(DataError, match="Ebay_test.txt does not exist; expected .*ROOT/Ebay_train"):
        load_sop(str(tmp_path))
    (tmp_path / "Ebay_test.txt").write_text(HEADER)
    with pytest.raises(DataError, match=r"Ebay_train.txt \(expected .*\): lists no images"):
        load_sop(str(tmp_path))
