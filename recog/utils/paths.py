"""Checks of an output path before anything is written there: its names fit the file system and a
folder can be created at or under it (``ConfigError`` naming the setting otherwise)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from recog.errors import ConfigError

# recog writes beside its outputs under temp names ".<name>.tmp-<pid>-<tag>" (recog.utils.atomic)
# and ".<name>.old": a folder's name must leave room for them.
TEMP_NAME_ROOM = 32
_NAME_MAX, _PATH_MAX = 255, 4096  # Linux's limits, when the file system does not say


WRITABLE_HINT = "choose a writable location (e.g. paths.output_root=<dir> or hydra.run.dir=<dir>)"


def check_writable(path: str, what: str, hint: str = WRITABLE_HINT) -> None:
    """``ConfigError`` unless a folder can be created at or under ``path`` (created later, by the
    run): names too long for the file system, a file in the way, or no write permission. Messages
    start ``{what}={path}``; ``hint`` says what to do about an unwritable place."""
    if not path:
        return
    check_name_lengths(path, what)
    target = Path(path).expanduser()
    try:
        parent = target if target.is_dir() else nearest_existing(target)
    except OSError as error:
        raise ConfigError(f"{what}={path} cannot be used: {error.strerror or error}") from None
    if parent is None:
        return
    if not parent.is_dir():
        raise ConfigError(f"{what}={path} cannot be created: {parent} is a file, not a folder")
    try:
        probe = tempfile.mkdtemp(prefix=".recog-write-check-", dir=parent)
        os.rmdir(probe)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ConfigError(
            f"{what}={path} is not writable: cannot create a folder in {parent} ({reason}); {hint}"
        ) from None


def check_name_lengths(path: str, what: str) -> None:
    """``ConfigError`` for the name of a folder still to be created that is longer than the file
    system takes (less the room recog's temp names beside it need), or a path longer than it takes."""
    absolute = Path(os.path.abspath(os.path.expanduser(path)))
    existing = nearest_existing(absolute)
    name_max, path_max = _limits(existing)
    new_parts = absolute.parts[len(existing.parts) if existing is not None else 0 :]
    longest = max(new_parts, key=lambda part: len(part.encode()), default="")
    limit = name_max - TEMP_NAME_ROOM
    if len(longest.encode()) > limit:
        shown = longest if len(longest) <= 40 else longest[:37] + "..."
        raise ConfigError(
            f"{what}: the name {shown!r} is {len(longest.encode())} bytes long; this file system takes "
            f"{name_max} per name, and recog needs {TEMP_NAME_ROOM} of them for the temp names it writes "
            f"beside its outputs: use a name of at most {limit} bytes"
        )
    full = len(os.path.abspath(os.path.expanduser(path)).encode())
    if full > path_max - 256:
        raise ConfigError(
            f"{what} is {full} bytes long as an absolute path; this file system takes {path_max}, and the "
            f"files recog writes under it need up to 256 more: use a shorter path"
        )


def nearest_existing(path: Path) -> Path | None:
    """``path`` or its nearest parent that exists (a broken symbolic link counts), None if none does."""
    for candidate in [path, *path.parents]:
        try:
            if candidate.exists() or candidate.is_symlink():
                return candidate
        except OSError:  # a name too long for the file system: look further up
            continue
    return None


def _limits(existing: Path | None) -> tuple[int, int]:
    folder = existing if existing is not None and existing.is_dir() else (existing.parent if existing else Path("/"))
    try:
        return os.pathconf(folder, "PC_NAME_MAX"), os.pathconf(folder, "PC_PATH_MAX")
    except (OSError, ValueError):
        return _NAME_MAX, _PATH_MAX
