"""recog.utils.atomic: files and directories replaced whole, failures that keep the previous version."""

import contextlib
import errno
import os
import subprocess
import sys

import numpy as np
import pytest

from recog.errors import RecogError
from recog.utils import atomic, manifest


def _tree(path):
    """``{relative path: bytes}`` of every file under ``path``."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _fill(directory, **files):
    for name, text in files.items():
        atomic.write_file(directory / name, text)


def _failing_write(after_bytes: int, code: int = errno.ENOSPC):
    """An ``os.write`` that writes ``after_bytes`` in total, then fails like a full disk."""
    real, left = os.write, [after_bytes]

    def write(fd, data):
        if left[0] <= 0:
            raise OSError(code, os.strerror(code))
        data = memoryview(data)[: left[0]]
        left[0] -= len(data)
        return real(fd, data)

    return write


def test_write_text_replaces_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "results.json"
    atomic.write_text(target, "old")
    atomic.write_text(target, "new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["results.json"]


def test_disk_full_midway_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    atomic.write_text(target, "previous")
    monkeypatch.setattr(os, "write", _failing_write(after_bytes=3))
    with pytest.raises(atomic.StorageError) as error:
        atomic.write_text(target, "x" * 100, what="search results")
    monkeypatch.undo()
    message = str(error.value)
    assert isinstance(error.value, RecogError)
    assert str(target) in message and "No space left on device [ENOSPC]" in message
    assert "previous search results there is unchanged" in message and "free some disk space" in message
    assert target.read_text() == "previous" and os.listdir(tmp_path) == ["results.json"]


def test_np_save_streams_through_open_file(tmp_path):
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    with atomic.open_file(tmp_path / "features.npy") as writer:
        np.save(writer, rows)
    np.testing.assert_array_equal(np.load(tmp_path / "features.npy"), rows)


def test_replacing_dir_swaps_the_whole_directory(tmp_path):
    target = tmp_path / "ckpt"
    with atomic.replacing_dir(target) as tmp:
        _fill(tmp, a="1", b="2")
    with atomic.replacing_dir(target) as tmp:
        _fill(tmp, a="3")
    assert _tree(target) == {"a": b"3"}  # b is gone: replaced whole, not merged
    assert os.listdir(tmp_path) == ["ckpt"]


def test_replacing_dir_without_exchange_falls_back_to_two_renames(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)  # e.g. not Linux
    target = tmp_path / "ckpt"
    for text in ("1", "2"):
        with atomic.replacing_dir(target) as tmp:
            _fill(tmp, a=text)
    assert _tree(target) == {"a": b"2"} and os.listdir(tmp_path) == ["ckpt"]


def test_exchange_is_used_on_linux(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x").write_text("a")
    if sys.platform.startswith("linux"):  # glibc >= 2.28 on ext4 / tmpfs / overlayfs
        assert atomic._exchange(tmp_path / "a", tmp_path / "b")
        assert (tmp_path / "b" / "x").read_text() == "a" and not (tmp_path / "a" / "x").exists()
    assert not atomic._exchange(tmp_path / "a", tmp_path / "missing")


@pytest.mark.parametrize(
    "code, words", [(errno.ENOSPC, "No space left on device [ENOSPC]"), (errno.EACCES, "Permission denied [EACCES]")]
)
def test_failed_directory_write_keeps_the_previous_directory(tmp_path, monkeypatch, code, words):
    target = tmp_path / "ckpt"
    with atomic.replacing_dir(target) as tmp:
        _fill(tmp, a="old a", b="old b")
    before = _tree(target)
    monkeypatch.setattr(os, "write", _failing_write(after_bytes=7, code=code))
    with pytest.raises(atomic.StorageError) as error:
        with atomic.replacing_dir(target, what="checkpoint") as tmp:
            _fill(tmp, a="new a", b="new b")
    monkeypatch.undo()
    message = str(error.value)
    assert f"could not write the checkpoint {target}: {words}" in message
    assert "previous checkpoint there is unchanged" in message and "/b" in message  # the file that failed
    assert _tree(target) == before and os.listdir(tmp_path) == ["ckpt"]


def test_first_write_failing_says_nothing_was_written(tmp_path, monkeypatch):
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if ".tmp-" in os.fspath(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    with pytest.raises(
        atomic.StorageError,
        match=r"Permission denied \[EACCES\] at .*\.out\.tmp-.*nothing was "
        r"written there.*check the permissions of",
    ):
        with atomic.replacing_dir(tmp_path / "out", what="export"):
            pass
    assert os.listdir(tmp_path) == []


def test_other_errors_pass_through_and_clean_up(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with atomic.replacing_dir(tmp_path / "out") as tmp:
            _fill(tmp, a="1")
            raise ZeroDivisionError
    assert os.listdir(tmp_path) == []


def test_killed_between_the_fallback_renames_reads_and_recovers_old(tmp_path):
    # The state a process killed after ``<name> -> .<name>.old`` and before ``tmp -> <name>`` leaves.
    target = tmp_path / "last"
    old, unfinished = tmp_path / ".last.old", tmp_path / ".last.tmp-999999999-abcdef"
    old.mkdir()
    (old / "state.json").write_text('{"epoch": 3}')
    manifest.write_manifest(old, "checkpoint")  # what makes it recog's (every folder recog swaps in has one)
    unfinished.mkdir()
    (unfinished / "state.json").write_text('{"epo')  # cut off mid-write
    assert atomic.readable_dir(target) == old and os.listdir(tmp_path) != ["last"]  # read-only so far
    with atomic.replacing_dir(target) as tmp:  # the next save tidies up first
        assert (target / "state.json").read_text() == '{"epoch": 3}'
        assert not old.exists() and not unfinished.exists()  # pid 999999999 does not run
        _fill(tmp, **{"state.json": '{"epoch": 4}'})
    assert atomic.readable_dir(target) == target and os.listdir(tmp_path) == ["last"]


@pytest.mark.parametrize("target_exists", [False, True])
def test_recovery_leaves_a_users_folder_named_like_ours_alone(tmp_path, target_exists):
    """A user's ``.out.old`` (no recog manifest) is neither read, adopted nor removed; nor is a
    folder whose name only starts like a temp directory's."""
    target = tmp_path / "out"
    if target_exists:
        with atomic.replacing_dir(target) as tmp:
            _fill(tmp, a="1")
            manifest.write_manifest(tmp, "export")
    users = [tmp_path / ".out.old", tmp_path / ".out.tmp-notes", tmp_path / ".out.tmp-999999999-abcdef-mine"]
    for folder in users:
        folder.mkdir()
        (folder / "mine.txt").write_text("the user's")
    forged = tmp_path / ".out.old" / "manifest.json"  # a recog manifest that does not list the user's file
    forged.write_text('{"format": "recog-manifest", "files": {}}')
    assert atomic.readable_dir(target) == target
    monkeypatched = atomic._exchange
    try:
        atomic._exchange = lambda a, b: False  # the two-rename fallback, which uses .out.old itself
        with pytest.raises(atomic.StorageError) if target_exists else contextlib.nullcontext():
            with atomic.replacing_dir(target, what="export") as tmp:
                _fill(tmp, a="2")
    finally:
        atomic._exchange = monkeypatched
    for folder in users:
        assert (folder / "mine.txt").read_text() == "the user's"
    if not target_exists:
        assert _tree(target) == {"a": b"2"}
    else:
        assert (target / "a").read_text() == "1"  # refused, the previous export unchanged


def test_an_interrupted_removal_of_old_is_tidied_by_the_next_save(tmp_path, monkeypatch):
    """The previous version is renamed to a temp name before it is removed: a kill during the
    removal leaves a temp directory of a gone process, which the next save removes."""
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    target = tmp_path / "last"
    with atomic.replacing_dir(target) as tmp:
        _fill(tmp, a="1")
    monkeypatch.setattr(atomic, "_remove", lambda path: None)  # killed before the removal finished
    with atomic.replacing_dir(target) as tmp:
        _fill(tmp, a="2")
    left = [name for name in os.listdir(tmp_path) if name != "last"]
    assert len(left) == 1 and left[0].startswith(".last.tmp-") and not (tmp_path / ".last.old").exists()
    monkeypatch.undo()
    os.rename(tmp_path / left[0], tmp_path / ".last.tmp-999999999-abcdef")  # its writer is gone
    with atomic.replacing_dir(target) as tmp:
        _fill(tmp, a="3")
    assert os.listdir(tmp_path) == ["last"] and _tree(target) == {"a": b"3"}


def test_a_live_writers_temp_directory_is_left_alone(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = tmp_path / f".out.tmp-{sleeper.pid}-abcdef"
        busy.mkdir()
        with atomic.replacing_dir(tmp_path / "out") as tmp:
            _fill(tmp, a="1")
        assert busy.is_dir()
    finally:
        sleeper.kill()
        sleeper.wait()
    atomic.recover_dir(tmp_path / "out")
    assert not busy.exists()


def test_preallocate_reports_a_full_disk(tmp_path, monkeypatch):
    scratch = tmp_path / "rows.partial.npy"
    np.lib.format.open_memmap(scratch, mode="w+", dtype=np.float32, shape=(64, 8)).flush()

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    atomic.preallocate(scratch)  # enough room: no error
    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(atomic.StorageError, match=r"rows\.partial\.npy: No space left on device"):
        atomic.preallocate(scratch)
