"""Generic image lists: one ``relative/path label`` per line."""

from __future__ import annotations

import os

from recog.data.splits import RetrievalSplits, Sample
from recog.errors import DataError

_MAX_REPORTED = 10


def format_bad_lines(path: str, problems: list[tuple[int, str]], expected: str) -> str:
    """One-paragraph message listing up to 10 ``(line_number, problem)`` pairs of ``path``."""
    shown = "; ".join(f"line {n}: {what}" for n, what in problems[:_MAX_REPORTED])
    more = f"; and {len(problems) - _MAX_REPORTED} more" if len(problems) > _MAX_REPORTED else ""
    return (f"{len(problems)} malformed line(s) in {path} (expected {expected}): "
            f"{shown}{more}")


def parse_label(text: str) -> tuple[int | None, str | None]:
    """``(label, None)`` for a non-negative integer, else ``(None, problem)``."""
    try:
        label = int(text)
    except ValueError:
        return None, f"label {text!r} is not an integer"
    if label < 0:
        return None, f"label {label} is negative"
    return label, None


def read_lines(path: str, what: str) -> list[str]:
    """The lines of a text file; DataError naming ``path`` if it cannot be read."""
    if not os.path.isfile(path):
        raise DataError(f"{what} {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {what} {path}: {e}") from None


def read_image_list(list_file: str, root: str) -> list[Sample]:
    """Read ``relative/path label`` lines (blank lines and ``#`` comments ignored).

    Paths are joined to ``root`` and made absolute. All malformed lines are reported at once
    in one DataError with their 1-based line numbers.
    """
    samples, problems = [], []
    for n, line in enumerate(read_lines(list_file, "image list"), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 2:
            problems.append((n, f"{len(fields)} fields in {line!r}"))
            continue
        label, problem = parse_label(fields[1])
        if problem:
            problems.append((n, problem))
            continue
        samples.append(Sample(os.path.abspath(os.path.join(root, fields[0])), label))
    if problems:
        raise DataError(format_bad_lines(list_file, problems, "'relative/path label'"))
    return samples


def check_split(samples: list[Sample], list_file: str) -> None:
    """Fail early on an empty split or a first image that is missing (usually a wrong root)."""
    if not samples:
        raise DataError(f"{list_file} lists no images")
    if not os.path.isfile(samples[0].path):
        raise DataError(f"image {samples[0].path}, the first listed in {list_file}, does not "
                        "exist: check the dataset root")


def load_lists(root: str, train_list: str, query_list: str, gallery_list: str | None = None,
               mirror_invariant: bool = True) -> RetrievalSplits:
    """Load splits from list files (relative to ``root`` unless absolute).

    Without ``gallery_list`` the query set is also the gallery (query == gallery protocol).
    """
    if not os.path.isdir(root):
        raise DataError(f"dataset root {root} does not exist")
    splits = {}
    for name, list_file in (("train", train_list), ("query", query_list), ("gallery", gallery_list)):
        if list_file is None:
            splits[name] = None
            continue
        list_file = os.path.join(root, list_file)
        splits[name] = read_image_list(list_file, root)
        check_split(splits[name], list_file)
    return RetrievalSplits(splits["train"], splits["query"], splits["gallery"], mirror_invariant)
