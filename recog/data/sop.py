"""Stanford Online Products layout: ``ROOT/Ebay_train.txt``, ``ROOT/Ebay_test.txt``."""

from __future__ import annotations

import os

from recog.data.lists import EntryChecker, ListProblems, Problem, missing_reason, parse_label, read_lines, short
from recog.data.splits import RetrievalSplits, Sample
from recog.errors import DataError

HEADER = ["image_id", "class_id", "super_class_id", "path"]
ROW_FORMAT = (
    "the header 'image_id class_id super_class_id path', then one image per line, ids integers "
    ">= 0, paths relative to the root"
)
_EXPECTED = (
    "the Stanford Online Products layout: ROOT/Ebay_train.txt and ROOT/Ebay_test.txt "
    "(header 'image_id class_id super_class_id path', then one image per line) and "
    "the image folders they list"
)


def parse_sop_file(path: str, root: str) -> tuple[list[Sample], list[Problem]]:
    """``(samples, problems)`` of one SOP list file; label = ``class_id``, image path = ``root/path``."""
    samples, checker = [], EntryChecker(root)
    header_seen = False
    for n, line in enumerate(read_lines(path, "SOP list file"), start=1):
        fields = line.split()
        if not fields:
            continue
        if not header_seen:
            header_seen = True
            if fields != HEADER:
                checker.problems.append((n, f"header {short(line.strip())} is not {' '.join(HEADER)!r}"))
            continue
        if len(fields) != 4:
            checker.problems.append((n, f"{len(fields)} fields in {short(line.strip())}"))
            continue
        ids, problems = [], []
        for name, text in zip(HEADER[:3], fields[:3]):
            value, problem = parse_label(text, what=name)
            ids.append(value)
            if problem:
                problems.append(problem)
        if problems:
            checker.problems.append((n, "; ".join(problems)))
            continue
        image = checker.path(n, fields[3])
        if image is not None:
            samples.append(Sample(image, ids[1]))
    return samples, checker.all_problems(samples)


def read_sop_file(path: str, root: str) -> list[Sample]:
    """Read one SOP list file; all its problems in one DataError."""
    samples, problems = parse_sop_file(path, root)
    found = ListProblems(os.path.abspath(root))
    found.add(path, problems, ROW_FORMAT)
    found.raise_if_any()
    return samples


def load_sop(
    root: str, train_file: str = "Ebay_train.txt", test_file: str = "Ebay_test.txt", mirror_invariant: bool = True
) -> RetrievalSplits:
    """Train on ``train_file``; query = gallery = ``test_file`` (the SOP protocol).

    The problems of both files are reported together."""
    if not os.path.isdir(root):
        raise DataError(f"dataset root {root} {missing_reason(root, 'folder')}; expected {_EXPECTED}")
    paths = [os.path.join(root, name) for name in (train_file, test_file)]
    for path in paths:
        if not os.path.isfile(path):
            raise DataError(f"{path} {missing_reason(path, 'file')}; expected {_EXPECTED}")
    splits, found = [], ListProblems(os.path.abspath(root))
    for path in paths:
        samples, problems = parse_sop_file(path, root)
        found.add(path, problems, ROW_FORMAT)
        splits.append(samples)
    found.raise_if_any()
    return RetrievalSplits(splits[0], splits[1], None, mirror_invariant)
