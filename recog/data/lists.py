"""Generic image lists: one ``relative/path label`` per line.

List files are checked in one pass before any work starts: every malformed line, label out of
range, duplicate path, missing image and path outside the dataset root of every list is
reported at once, in one ``DataError`` with file names and 1-based line numbers.
"""

from __future__ import annotations

import os
import re

from recog.data.splits import RetrievalSplits, Sample
from recog.errors import DataError

MAX_LABEL = 2**31 - 1
_MAX_REPORTED = 20
_INTEGER = re.compile(r"-?[0-9]+")  # ASCII digits only: int() would also take "1_0" and other scripts' digits
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

Problem = tuple[int | None, str]  # (1-based line number or None for the whole file, what is wrong)


def format_bad_lines(path: str, problems: list[Problem], expected: str) -> str:
    """One-paragraph message listing up to 20 ``(line_number, problem)`` pairs of ``path``."""
    shown = "; ".join(_describe(n, what) for n, what in problems[:_MAX_REPORTED])
    more = f"; and {len(problems) - _MAX_REPORTED} more" if len(problems) > _MAX_REPORTED else ""
    return f"{len(problems)} malformed line(s) in {path} (expected {expected}): {shown}{more}"


def short(text: str, limit: int = 80) -> str:
    """``text`` quoted, cut to ``limit`` characters (a hostile line can be megabytes long)."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def _describe(line: int | None, what: str) -> str:
    return what if line is None else f"line {line}: {what}"


class ListProblems:
    """Problems of one or more list files, raised together as one ``DataError``."""

    def __init__(self, root: str):
        self.root = root
        self.by_file: dict[str, list[Problem]] = {}
        self.expected: dict[str, str] = {}

    def add(self, list_file: str, problems: list[Problem], expected: str) -> None:
        if problems:
            self.by_file.setdefault(list_file, []).extend(problems)
            self.expected[list_file] = expected

    def raise_if_any(self) -> None:
        total = sum(len(p) for p in self.by_file.values())
        if not total:
            return
        parts, budget = [], _MAX_REPORTED
        for list_file, problems in self.by_file.items():
            if budget <= 0:
                break
            shown = "; ".join(_describe(n, what) for n, what in problems[:budget])
            parts.append(f"{list_file} (expected {self.expected[list_file]}): {shown}")
            budget -= min(budget, len(problems))
        more = f"; and {total - _MAX_REPORTED} more" if total > _MAX_REPORTED else ""
        raise DataError(
            f"{total} problem(s) in the dataset lists (image paths relative to the dataset root "
            f"{self.root}): {'; '.join(parts)}{more}"
        )


def parse_label(text: str, what: str = "label") -> tuple[int | None, str | None]:
    """``(label, None)`` for an integer in ``0 .. 2**31 - 1`` (ASCII digits), else ``(None, problem)``."""
    if not _INTEGER.fullmatch(text):
        return None, f"{what} {short(text)} is not an integer"
    if text.startswith("-") and text.strip("-0"):
        return None, f"{what} {short(text)} is negative"
    if len(text.lstrip("0")) > len(str(MAX_LABEL)) or int(text) > MAX_LABEL:
        return None, f"{what} {short(text)} is over {MAX_LABEL}"
    return int(text), None


def missing_reason(path: str, kind: str) -> str:
    """Why ``path`` is not the ``kind`` (``folder`` / ``file``) expected: "does not exist", or what it is."""
    if not os.path.lexists(path):
        return "does not exist"
    if os.path.islink(path) and not os.path.exists(path):
        return "is a broken symbolic link"
    found = "a folder" if os.path.isdir(path) else "a file" if os.path.isfile(path) else "not a regular file"
    return f"is {found}, not a {kind}"


def read_lines(path: str, what: str) -> list[str]:
    """The lines of a UTF-8 text file (a byte-order mark is ignored), split at newlines only, so
    line numbers match an editor's; DataError naming ``path`` if it cannot be read, and the
    numbers of the lines that are not UTF-8 if some are not."""
    if not os.path.isfile(path):
        raise DataError(f"{what} {path} {missing_reason(path, 'file')}")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"cannot read {what} {path}: {e}") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    raw = data.split(b"\n")
    if raw and raw[-1] == b"":
        raw = raw[:-1]
    lines, undecodable = [], []
    for number, line in enumerate(raw, start=1):
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            undecodable.append(number)
    if undecodable:
        shown = ", ".join(str(n) for n in undecodable[:_MAX_REPORTED])
        more = f" and {len(undecodable) - _MAX_REPORTED} more" if len(undecodable) > _MAX_REPORTED else ""
        raise DataError(
            f"cannot read {what} {path}: it is not UTF-8 text, line(s) {shown}{more} cannot be "
            "decoded; save the file as UTF-8"
        )
    return lines


def resolve_image_path(relative: str, root: str) -> tuple[str | None, str | None]:
    """``(absolute path, None)`` for a path inside ``root``, else ``(None, problem)``.

    Absolute paths and paths that leave the root (``../``) are refused; the check is on the
    normalised path, not on symbolic links (a link inside the root is the dataset owner's choice).
    """
    if _CONTROL.search(relative):
        return None, f"path {short(relative)} contains control characters"
    if os.path.isabs(relative):
        return None, f"absolute path {short(relative)} refused: list paths relative to the dataset root"
    root = os.path.abspath(root)
    path = os.path.normpath(os.path.join(root, relative))
    if os.path.commonpath([root, path]) != root:
        return None, f"path {short(relative)} refused: it leaves the dataset root"
    return path, None


class EntryChecker:
    """Checks the image paths of one list file: inside the root, listed once, present on disk."""

    def __init__(self, root: str):
        self.root = root
        self.first_line: dict[str, int] = {}
        self.missing: list[Problem] = []
        self.problems: list[Problem] = []

    def path(self, line: int, relative: str) -> str | None:
        """The absolute image path of ``relative`` (listed on ``line``), or None after noting a problem."""
        path, problem = resolve_image_path(relative, self.root)
        if problem:
            self.problems.append((line, problem))
            return None
        if path in self.first_line:
            self.problems.append((line, f"{short(relative)} is listed again (first on line {self.first_line[path]})"))
            return None
        self.first_line[path] = line
        if not os.path.isfile(path):
            what = "is not a file" if os.path.exists(path) else "does not exist"
            self.missing.append((line, f"image {short(relative)} {what}"))
        return path

    def all_problems(self, samples: list[Sample]) -> list[Problem]:
        """Every problem by line; an empty list, or one whose images are all missing, as one problem."""
        problems = list(self.problems)
        if not samples and not problems:
            problems.append((None, "lists no images"))
        elif samples and len(self.missing) == len(samples):
            problems.append(
                (
                    None,
                    f"none of the {len(samples)} listed images exist, e.g. {short(samples[0].path, 200)}: "
                    "check the dataset root",
                )
            )
        else:
            problems.extend(self.missing)
        return sorted(problems, key=lambda p: -1 if p[0] is None else p[0])


LIST_FORMAT = "'relative/path label' per line, label an integer >= 0"


def parse_image_list(list_file: str, root: str) -> tuple[list[Sample], list[Problem]]:
    """``(samples, problems)`` of a ``relative/path label`` list (blank lines and ``#`` comments ignored)."""
    samples, checker = [], EntryChecker(root)
    for n, line in enumerate(read_lines(list_file, "image list"), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 2:
            checker.problems.append((n, f"{len(fields)} fields in {short(line)}"))
            continue
        label, problem = parse_label(fields[1])
        if problem:
            checker.problems.append((n, problem))
            continue
        path = checker.path(n, fields[0])
        if path is not None:
            samples.append(Sample(path, label))
    return samples, checker.all_problems(samples)


def read_image_list(list_file: str, root: str) -> list[Sample]:
    """Read a ``relative/path label`` list: absolute paths under ``root``; all problems in one DataError."""
    samples, problems = parse_image_list(list_file, root)
    found = ListProblems(os.path.abspath(root))
    found.add(list_file, problems, LIST_FORMAT)
    found.raise_if_any()
    return samples


def load_lists(
    root: str, train_list: str, query_list: str, gallery_list: str | None = None, mirror_invariant: bool = True
) -> RetrievalSplits:
    """Load splits from list files (relative to ``root`` unless absolute).

    Without ``gallery_list`` the query set is also the gallery (query == gallery protocol).
    The problems of all the lists are reported together.
    """
    if not os.path.isdir(root):
        raise DataError(f"dataset root {root} {missing_reason(root, 'folder')}")
    splits, found = {}, ListProblems(os.path.abspath(root))
    for name, list_file in (("train", train_list), ("query", query_list), ("gallery", gallery_list)):
        if list_file is None:
            splits[name] = None
            continue
        list_file = os.path.join(root, list_file)
        splits[name], problems = parse_image_list(list_file, root)
        found.add(list_file, problems, LIST_FORMAT)
    found.raise_if_any()
    return RetrievalSplits(splits["train"], splits["query"], splits["gallery"], mirror_invariant)
