"""Crash-safe writes: an output file or directory is replaced whole, or not at all.

Files (``write_bytes``, ``write_text``, ``open_file``): written to ``.<name>.tmp-<pid>-<tag>``
beside the target, fsync'ed, renamed over the target (``os.replace``: atomic on POSIX), then the
parent directory is fsync'ed so that the rename itself survives a power cut.

Directories of several files (``replacing_dir``; checkpoints, exports, gallery indexes):

1. every file is written into ``.<name>.tmp-<pid>-<tag>/`` beside the target;
2. every file and directory in it is fsync'ed;
3. the swap: on Linux one ``renameat2(RENAME_EXCHANGE)`` exchanges the two directories atomically,
   so ``<name>`` is always a complete version; where that call is missing or refused (other
   systems, some file systems), ``<name>`` is renamed to ``.<name>.old`` and the new directory to
   ``<name>``;
4. the parent directory is fsync'ed and the previous version removed.

A process killed at any moment (SIGKILL, power cut) leaves one of these states:

* ``<name>`` complete (the previous or the new version), perhaps beside a temp directory
  (unfinished, or holding the previous version after an exchange) or a partly removed ``.old``;
* no ``<name>`` but a complete ``.<name>.old`` (killed between the two renames of the fallback).

``readable_dir`` picks the directory to read (``<name>``, else ``.<name>.old``) without changing
anything; the next ``replacing_dir`` of the same target first puts ``.old`` back (if ``<name>``
is missing) or removes it, and removes the temp directories of processes that are gone. A temp
directory is never read. Recovery touches only what recog wrote: a ``.old`` must hold a manifest
of recog's listing every file in it (``is_recog_folder``: checkpoints, exports and gallery indexes
have one), a temp directory must carry the exact temp name; a user's folder called ``.out.old`` is
neither read, adopted nor removed.

Failures: an ``OSError`` while writing (disk full, permission denied, read-only file system, ...)
removes the temporary files and raises ``StorageError`` naming the target and the OS reason; the
previous version is untouched. Other exceptions pass through, after the same clean-up.
"""

import ctypes
import errno
import functools
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from recog.errors import RecogError

_TMP = ".tmp-"
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


class StorageError(RecogError):
    """Writing an output failed (disk full, permission denied, ...); the previous version is unchanged."""


class FileWriter:
    """``write(bytes-like)`` straight to a file descriptor via ``os.write`` (a file object for ``np.save``)."""

    def __init__(self, fd: int):
        self.fd = fd

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        written = 0
        while written < len(view):
            written += os.write(self.fd, view[written:])
        return written


def write_file(path, data: bytes | str) -> None:
    """Create or truncate ``path`` and write ``data`` (``str``: UTF-8); not atomic by itself:
    for files inside a ``replacing_dir`` temp directory, which is fsync'ed as a whole."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        FileWriter(fd).write(data.encode("utf-8") if isinstance(data, str) else data)
    except OSError as error:
        raise _with_filename(error, path) from None
    finally:
        os.close(fd)


@contextmanager
def open_file(path, what: str = "file") -> Iterator[FileWriter]:
    """Write ``path`` atomically through the yielded ``FileWriter``: the target changes only when
    the block completes."""
    target = Path(path)
    existed = target.exists()
    tmp = _temp_path(target)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            yield FileWriter(fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except OSError as error:
        raise storage_error(what, target, _with_filename(error, tmp), existed) from None
    finally:
        _remove(tmp)


def write_bytes(path, data: bytes, what: str = "file") -> Path:
    """Replace ``path`` with ``data`` atomically (``StorageError`` on failure, old file kept)."""
    with open_file(path, what) as writer:
        writer.write(data)
    return Path(path)


def write_text(path, text: str, what: str = "file") -> Path:
    return write_bytes(path, text.encode("utf-8"), what)


@contextmanager
def replacing_dir(path, what: str = "directory") -> Iterator[Path]:
    """Yield an empty temp directory beside ``path``; when the block completes, its content
    replaces ``path`` whole (the swap of the module docstring). The parent is created if needed."""
    target = Path(path)
    existed = False
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        recover_dir(target)
        existed = target.exists()
        tmp = _temp_path(target)
        os.mkdir(tmp, 0o777)
        yield tmp
        _fsync_tree(tmp)
        _swap_in(tmp, target)
    except OSError as error:
        raise storage_error(what, target, error, existed) from None
    finally:
        if tmp is not None:
            _remove(tmp)


def readable_dir(path) -> Path:
    """The directory holding ``path``'s last complete version: ``path``, or its ``.old`` left by
    a process killed mid-swap; ``path`` itself when neither exists. Changes nothing on disk."""
    path = Path(path)
    old = _old_path(path)
    return old if not path.exists() and is_recog_folder(old) else path


def recover_dir(path) -> None:
    """Tidy what a killed writer of ``path`` left: put a complete ``.old`` back when ``path`` is
    missing, else remove it; remove temp directories of processes that no longer run.

    Only what recog wrote is touched: a ``.old`` must be a folder recog writes (``is_recog_folder``),
    a temp directory must carry the exact ``.<name>.tmp-<pid>-<tag>`` name; anything else of that
    name (a user's folder) is left alone."""
    path = Path(path)
    old = _old_path(path)
    if old.exists() and is_recog_folder(old):
        if path.exists() or path.is_symlink():
            _remove_whole(old, path)
        else:
            os.replace(old, path)
    prefix = f".{path.name}{_TMP}"
    if path.parent.is_dir():
        for entry in os.scandir(path.parent):
            suffix = entry.name[len(prefix) :]
            if (
                entry.name.startswith(prefix)
                and _TEMP_SUFFIX.fullmatch(suffix)
                and entry.is_dir(follow_symlinks=False)
                and not _writer_alive(suffix)
            ):
                _remove(Path(entry.path))


# The manifests of the folders recog swaps in whole: checkpoints and exports (recog.utils.manifest),
# gallery indexes (recog.search.store); "files" or "index_file" name what else the folder holds.
_RECOG_FORMATS = ("recog-manifest", "recog.gallery_index")
_TEMP_SUFFIX = re.compile(r"\d+-[0-9a-f]{6}")


def is_recog_folder(path: Path) -> bool:
    """Whether ``path`` is a folder recog writes: a ``manifest.json`` of one of recog's formats, and
    nothing but regular files it lists (no symbolic link, no folder). A folder whose removal was cut
    short by a kill still qualifies (fewer files); a user's folder of the same name does not."""
    path = Path(path)
    try:
        if path.is_symlink() or not path.is_dir():
            return False
        with open(path / "manifest.json", "rb") as handle:
            data = json.loads(handle.read(1 << 20))
        if not isinstance(data, dict) or data.get("format") not in _RECOG_FORMATS:
            return False
        listed = set(data.get("files") or ()) if isinstance(data.get("files"), dict) else {data.get("index_file")}
        for entry in os.scandir(path):
            if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
                return False
            if entry.name != "manifest.json" and entry.name not in listed:
                return False
    except (OSError, ValueError, RecursionError):
        return False
    return True


def preallocate(path, what: str = "scratch file") -> None:
    """Reserve the disk blocks of ``path`` (e.g. a fresh ``np.memmap``), so that a full disk is a
    ``StorageError`` now rather than a SIGBUS while the memory map is written."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0 or not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as error:
        if error.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return  # the file system cannot reserve: write as before
        raise storage_error(what, path, _with_filename(error, path), None) from None
    finally:
        os.close(fd)


def storage_error(what: str, target: Path, error: OSError, existed: bool | None) -> StorageError:
    """``StorageError``: which output, why (the OS reason and its errno name), what was kept."""
    code = errno.errorcode.get(error.errno or 0)
    reason = (error.strerror or str(error)) + (f" [{code}]" if code else "")
    if error.filename and Path(error.filename) != target:
        reason += f" at {error.filename}"
    hint = {
        errno.ENOSPC: "free some disk space",
        errno.EDQUOT: "free some disk space",
        errno.EACCES: f"check the permissions of {target.parent}",
        errno.EPERM: f"check the permissions of {target.parent}",
        errno.EROFS: "write to a writable file system",
    }.get(error.errno, "")
    kept = {
        True: f"the previous {what} there is unchanged",
        False: "nothing was written there",
        None: "it was removed",
    }[existed]
    return StorageError(
        f"could not write the {what} {target}: {reason}; {kept}" + (f". To retry, {hint} and run again" if hint else "")
    )


def _swap_in(new: Path, target: Path) -> None:
    if _exchange(new, target):  # ``new`` now holds the previous version
        _fsync_dir(target.parent)
        _remove(new)
        return
    old = _old_path(target)
    had_target = target.exists()
    if had_target:
        os.replace(target, old)  # fails on a user's non-empty .old: it is not replaced
    try:
        os.replace(new, target)
    except OSError:
        if had_target:
            os.replace(old, target)
        raise
    _fsync_dir(target.parent)
    if had_target:  # the previous version: ours, renamed a moment ago
        _remove_whole(old, target)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux renameat2); False where unavailable or ``b`` is missing."""
    if not b.exists():
        return False
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False  # not supported here: fall back to two renames
    raise OSError(code, os.strerror(code), str(b))


@functools.lru_cache(maxsize=1)
def _renameat2():
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except (AttributeError, OSError):
        return None


def _fsync_tree(root: Path) -> None:
    """fsync every file, then every directory (deepest first), under ``root``."""
    for top, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            _fsync_path(os.path.join(top, name), os.O_RDONLY)
        _fsync_dir(top)


def _fsync_dir(path) -> None:
    _fsync_path(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync_path(path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_path(target: Path) -> Path:
    return target.with_name(f".{target.name}{_TMP}{os.getpid()}-{secrets.token_hex(3)}")


def _old_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def _writer_alive(suffix: str) -> bool:
    """Whether the process named in a temp suffix ``<pid>-<tag>`` still runs (unknown: yes)."""
    try:
        pid = int(suffix.split("-", 1)[0])
    except ValueError:
        return True
    if pid == os.getpid():
        return True  # maybe another thread's write in progress
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_whole(path: Path, target: Path) -> None:
    """Remove ``path`` (a folder of ours beside ``target``) after renaming it to a temp name of
    ``target``'s, so that a removal cut short leaves a temp directory (tidied by the next
    ``recover_dir``), never a half-empty ``.old``."""
    doomed = _temp_path(target)
    try:
        os.replace(path, doomed)
    except OSError:
        doomed = path
    _remove(doomed)


def _remove(path: Path) -> None:
    """Best-effort clean-up: the caller's own outcome matters more than a leftover temp file."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except OSError:
            pass


def _with_filename(error: OSError, path) -> OSError:
    return error if error.filename else OSError(error.errno, error.strerror or str(error), str(path))
