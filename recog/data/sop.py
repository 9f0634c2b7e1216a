"""Stanford Online Products layout: ``ROOT/Ebay_train.txt``, ``ROOT/Ebay_test.txt``."""

from __future__ import annotations

import os

from recog.data.lists import check_split, format_bad_lines, parse_label, read_lines
from recog.data.splits import RetrievalSplits, Sample
from recog.errors import DataError

HEADER = ["image_id", "class_id", "super_class_id", "path"]
_EXPECTED = ("the Stanford Online Products layout: ROOT/Ebay_train.txt and ROOT/Ebay_test.txt "
             "(header 'image_id class_id super_class_id path', then one image per line) and "
             "the image folders they list")


def read_sop_file(path: str, root: str) -> list[Sample]:
    """Read one SOP list file; label = ``class_id``, image path = ``root/path``."""
    lines = read_lines(path, "SOP list file")
    samples, problems = [], []
    header_seen = False
    for n, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if not header_seen:
            header_seen = True
            if fields != HEADER:
                problems.append((n, f"header {line.strip()!r} is not {' '.join(HEADER)!r}"))
            continue
        if len(fields) != 4:
            problems.append((n, f"{len(fields)} fields in {line.strip()!r}"))
            continue
        label, problem = parse_label(fields[1])
        if problem:
            problems.append((n, "class_id: " + problem))
            continue
        samples.append(Sample(os.path.abspath(os.path.join(root, fields[3])), label))
    if problems:
        raise DataError(format_bad_lines(
            path, problems, "'image_id class_id super_class_id path' after the header"))
    return samples


def load_sop(root: str, train_file: str = "Ebay_train.txt", test_file: str = "Ebay_test.txt",
             mirror_invariant: bool = True) -> RetrievalSplits:
    """Train on ``train_file``; query = gallery = ``test_file`` (the SOP protocol)."""
    if not os.path.isdir(root):
        raise DataError(f"dataset root {root} does not exist; expected {_EXPECTED}")
    paths = [os.path.join(root, name) for name in (train_file, test_file)]
    for path in paths:
        if not os.path.isfile(path):
            raise DataError(f"{path} does not exist; expected {_EXPECTED}")
    splits = []
    for path in paths:
        samples = read_sop_file(path, root)
        check_split(samples, path)
        splits.append(samples)
    return RetrievalSplits(splits[0], splits[1], None, mirror_invariant)
