"""The record of images a run skipped: ``<run dir>/bad_images.tsv``, one ``path<TAB>reason`` line each.

Lines are appended by whichever process met the image (DataLoader workers included), each with
a single ``write`` on a file opened with ``O_APPEND``, so lines from concurrent processes do not
interleave. Each process writes a path once per file; a path can still appear once per process
(e.g. per DataLoader worker): ``read_bad_images`` returns each path once, and ``summarize`` (at
the end of a stage) rewrites the file with each path once. Tabs, newlines and
backslashes in paths and reasons are escaped as ``\\t``, ``\\n``, ``\\r`` and ``\\\\``.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)

FILE_NAME = "bad_images.tsv"
HEADER = "path\treason"

_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_UNESCAPES = {v: k for k, v in _ESCAPES.items()}
_recorded: set = set()  # (record file, image path) already written (or warned about) by this process


def _escape(text: str) -> str:
    return "".join(_ESCAPES.get(c, c) for c in text)


def _unescape(text: str) -> str:
    return re.sub(r"\\[\\tnr]", lambda m: _UNESCAPES[m.group(0)], text)


def _append_line(record: str, line: str) -> None:
    """Append ``line`` (ending in a newline) with one write; the header goes with the first line."""
    try:
        fd = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
        line = HEADER + "\n" + line
    except FileExistsError:
        fd = os.open(record, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, line.encode("utf-8", "backslashreplace"))
    finally:
        os.close(fd)


def record_bad_image(record: str | None, path: str, reason: str, action: str) -> None:
    """Warn once per process that ``path`` is bad and append it to ``record`` (if not None).

    ``action`` says what happened to it, e.g. "replaced by another image of its class". A record
    that cannot be written is warned about; it never stops the run.
    """
    key = (record, path)
    if key in _recorded:
        return
    _recorded.add(key)
    log.warning("bad image %s: %s; %s", path, reason, action)
    if record is None:
        return
    try:
        _append_line(record, f"{_escape(path)}\t{_escape(reason)}\n")
    except OSError as e:
        log.warning("cannot record bad image %s in %s: %s", path, record, e.strerror or e)


def read_bad_images(record: str | Path) -> dict[str, str]:
    """``{path: reason}`` of a record file, each path once, in first-seen order; ``{}`` if there is no file."""
    try:
        text = Path(record).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    found: dict[str, str] = {}
    for line in text.split("\n"):
        if not line or line == HEADER:  # another process may have appended before the header
            continue
        path, _, reason = line.partition("\t")
        found.setdefault(_unescape(path), _unescape(reason))
    return found


def summarize(record: str | Path) -> str | None:
    """One line for the end of a run, e.g. "2 bad image(s) skipped, listed in <record>"; None if none.

    Called once the loaders are done: a record listing an image more than once (once per process
    that met it) is rewritten with each image once, so that the file and the count agree."""
    found = read_bad_images(record)
    if not found:
        return None
    lines = Path(record).read_text(encoding="utf-8").count("\n") - 1  # minus the header
    if lines > len(found):
        from recog.utils import atomic

        text = HEADER + "\n" + "".join(f"{_escape(path)}\t{_escape(reason)}\n" for path, reason in found.items())
        try:
            atomic.write_bytes(Path(record), text.encode("utf-8", "backslashreplace"), "the bad-images record")
        except (OSError, atomic.StorageError) as error:  # never the end of a run: the count below is right either way
            log.warning("cannot rewrite %s with each image once: %s", record, error)
    return f"{len(found)} bad image(s) skipped, listed in {record}"
