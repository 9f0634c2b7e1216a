"""The embedded default dataset: scikit-learn's 1797 handwritten 8x8 digits in the SOP layout.

Digits 0-4 are the training classes, 5-9 the unseen test classes (query == gallery).
Files: ``root/images/<digit>/<index>.png`` (8x8 grayscale uint8) and ``root/Ebay_train.txt``,
``root/Ebay_test.txt``. For the predict stage the test split is also written as two generic lists
(``path label``): ``gallery_list.txt`` (every other test image) and ``query_list.txt`` (the rest).
Digits are not mirror invariant, hence ``mirror_invariant=False``.

The files are written only into a new or empty folder, or one recog wrote the digits into before
(``MARKER``, written first): a ``dataset.root`` holding anything else (a user's own SOP folder, say)
is a ``DataError``, never overwritten.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile

import cv2
import numpy as np

from recog.data.sop import HEADER, load_sop
from recog.data.splits import RetrievalSplits
from recog.errors import DataError

TRAIN_DIGITS = range(0, 5)
LIST_FILES = ("Ebay_train.txt", "Ebay_test.txt")
PREDICT_LISTS = ("gallery_list.txt", "query_list.txt")
MARKER = ".recog-digits"  # this folder is recog's digits: the writer may (re)write its files


def _write_atomic(path: str, data: bytes) -> None:
    """Write via a temp file in the same folder + rename, so readers never see a partial file."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _is_complete(root: str) -> bool:
    """All list files exist and every image the SOP lists name exists."""
    if not all(os.path.isfile(os.path.join(root, name)) for name in PREDICT_LISTS):
        return False
    for name in LIST_FILES:
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            return False
        with open(path, encoding="utf-8") as f:
            rows = f.read().split("\n")[1:]
        for row in filter(None, rows):
            fields = row.split()
            if len(fields) != 4 or not os.path.isfile(os.path.join(root, fields[3])):
                return False
    return True


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: ``images [1797, 8, 8]`` float64 in 0..16, ``targets [1797]`` int64.

    Read from the CSV file scikit-learn ships (64 pixels and the digit per row), found without
    importing scikit-learn, which takes about 2 s; through ``sklearn.datasets`` if it is not there.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the embedded digits come with scikit-learn, which is not installed: pip install scikit-learn")
    path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", "digits.csv.gz")
    if os.path.isfile(path):
        table = np.loadtxt(path, delimiter=",")
        if table.shape == (1797, 65):
            return table[:, :64].reshape(-1, 8, 8), table[:, 64].astype(np.int64)
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    return digits.images, digits.target.astype(np.int64)


def write_digits(root: str) -> None:
    """Write the digits under ``root`` unless already complete; list files are written last."""
    if _is_complete(root):
        return
    claim_folder(root)
    digit_images, targets = read_digits()
    images = np.rint(digit_images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    rows = {name: [" ".join(HEADER)] for name in LIST_FILES}
    try:
        for index, (image, digit) in enumerate(zip(images, targets.tolist())):
            rel = f"images/{digit}/{index:04d}.png"
            os.makedirs(os.path.join(root, "images", str(digit)), exist_ok=True)
            ok, png = cv2.imencode(".png", image)
            if not ok:
                raise DataError(f"cannot encode digit image {index} as PNG")
            _write_atomic(os.path.join(root, rel), png.tobytes())
            name = LIST_FILES[0] if digit in TRAIN_DIGITS else LIST_FILES[1]
            rows[name].append(f"{index + 1} {digit} {digit} {rel}")
        test = [row.split() for row in rows[LIST_FILES[1]][1:]]
        rows[PREDICT_LISTS[0]] = [f"{rel} {digit}" for _, digit, _, rel in test[0::2]]
        rows[PREDICT_LISTS[1]] = [f"{rel} {digit}" for _, digit, _, rel in test[1::2]]
        for name, lines in rows.items():
            _write_atomic(os.path.join(root, name), ("\n".join(lines) + "\n").encode())
    except OSError as e:
        raise DataError(f"cannot write the digits dataset under {root}: {e}") from None


def claim_folder(root: str) -> None:
    """Create ``root`` with ``MARKER`` (or check it is new, empty or marked): ``DataError`` for a
    folder holding anything else, which the digits' files must not overwrite."""
    if os.path.exists(root) and not os.path.isdir(root):
        raise DataError(f"dataset root {root} is a file, not a folder: the digits are written into a folder")
    try:
        # .tmp-*: a file being written by another process claiming the folder at the same moment
        entries = {e for e in os.listdir(root) if not e.startswith(".tmp-")} if os.path.isdir(root) else set()
        if entries and MARKER not in entries:
            shown = ", ".join(sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
            raise DataError(
                f"dataset root {root} holds files recog did not write ({shown}): the digits are written only "
                "into a new or empty folder (or one they were written into before), never over other files. "
                "Choose another dataset.root, or paths.output_root for the default one"
            )
        os.makedirs(root, exist_ok=True)
        if MARKER not in entries:
            _write_atomic(os.path.join(root, MARKER), b"recog wrote the digits dataset here\n")
    except OSError as e:
        raise DataError(f"cannot write the digits dataset under {root}: {e}") from None


def load_digits(root: str, mirror_invariant: bool = False) -> RetrievalSplits:
    """Write the digits once under ``root`` (no download), then load them as SOP."""
    write_digits(root)
    return load_sop(root, mirror_invariant=mirror_invariant)
