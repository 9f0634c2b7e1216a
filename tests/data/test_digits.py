import os

import numpy as np

from recog.data import decode_image, load_digits
from recog.data.digits import read_digits


def test_digits_written_once_split_by_class(tmp_path):
    root = str(tmp_path / "digits")
    splits = load_digits(root)
    assert {s.label for s in splits.train} == {0, 1, 2, 3, 4}
    assert {s.label for s in splits.query} == {5, 6, 7, 8, 9}
    assert len(splits.train) + len(splits.query) == 1797
    assert splits.gallery is None and not splits.mirror_invariant

    image = decode_image(splits.train[0].path)  # sklearn index 0
    assert image.shape == (8, 8, 3) and image.dtype == np.uint8
    import sklearn.datasets  # here, not at collection: 1.5 s of every test process's start

    expected = np.rint(sklearn.datasets.load_digits().images[0] * 255 / 16)
    np.testing.assert_array_equal(image[..., 1], expected)

    watched = [
        os.path.join(root, "Ebay_train.txt"),
        os.path.join(root, "Ebay_test.txt"),
        splits.train[0].path,
        splits.query[-1].path,
    ]
    mtimes = [os.stat(p).st_mtime_ns for p in watched]
    again = load_digits(root)
    assert [os.stat(p).st_mtime_ns for p in watched] == mtimes
    assert again.train == splits.train and again.query == splits.query


def test_interrupted_write_is_redone(tmp_path):
    root = str(tmp_path)
    splits = load_digits(root)
    os.remove(splits.query[3].path)  # as if the writer died before finishing
    os.remove(os.path.join(root, "Ebay_test.txt"))
    again = load_digits(root)
    assert os.path.isfile(splits.query[3].path)
    assert again.query == splits.query
    assert not [f for f in os.listdir(root) if f.startswith(".tmp")]


def test_read_digits_equals_scikit_learns_loader():
    import sklearn.datasets

    images, targets = read_digits()  # read from the shipped CSV, without importing scikit-learn
    expected = sklearn.datasets.load_digits()
    assert images.shape == (1797, 8, 8) and targets.dtype == np.int64
    np.testing.assert_array_equal(images, expected.images)
    np.testing.assert_array_equal(targets, expected.target)


def test_digits_are_never_written_over_a_users_folder(tmp_path):
    """A dataset.root holding a user's SOP lists got the digits' Ebay_train.txt / Ebay_test.txt over them."""
    import pytest

    from recog.errors import DataError

    users = tmp_path / "sop"
    users.mkdir()
    (users / "Ebay_train.txt").write_text("the user's list\n")
    with pytest.raises(DataError, match=r"dataset root .*sop holds files recog did not write \(Ebay_train.txt\)"):
        load_digits(str(users))
    assert [p.name for p in users.iterdir()] == ["Ebay_train.txt"]
    assert (users / "Ebay_train.txt").read_text() == "the user's list\n"
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="dataset root .*file is a file, not a folder"):
        load_digits(str(tmp_path / "file"))
