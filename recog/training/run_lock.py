"""One training per run dir: ``<run dir>/.recog.lock`` holds the owner's host and PID while it trains.

Two trainings writing into one run dir would overwrite each other's checkpoint, best model and
metrics. The lock is created exclusively and atomically (written to a temp file, then hard-linked
to its name: the link fails if the lock exists), so of two racing processes exactly one wins. A
lock whose process is gone (same host, PID not running) is stale and taken over with a warning; a
lock of another host cannot be checked and is refused (delete it by hand once that run is over).
"""

import json
import logging
import os
import socket
import time
from pathlib import Path

from recog.errors import ConfigError

log = logging.getLogger(__name__)

LOCK_FILE = ".recog.lock"


class RunLock:
    """``with RunLock(run_dir):`` holds the run dir's lock; released on exit, also on errors."""

    def __init__(self, run_dir, what: str = "training"):
        self.path = Path(run_dir) / LOCK_FILE
        self.what = what
        self.owner = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "what": what,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        self.held = False

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a stale lock removed by a racing process: try again
            if self._create():
                self.held = True
                return
            holder = self._read()
            if holder is None:  # vanished between the two calls, or unreadable (being written)
                time.sleep(0.05)
                holder = self._read()
                if holder is None and not self.path.exists():
                    continue
            if holder is not None and self._alive(holder):
                raise ConfigError(self._in_use(holder))
            log.warning(
                "taking over the stale lock %s of %s",
                self.path,
                f"PID {holder.get('pid')} on {holder.get('host')} (no longer running)"
                if holder
                else "an unreadable lock file",
            )
            self._remove_if_unchanged(holder)
        raise ConfigError(f"could not take the lock {self.path}: another process keeps replacing it")

    def check_free(self) -> None:
        """``ConfigError`` (as ``acquire``'s) if a live process holds the lock; takes nothing: ``run.py``
        checks this before Hydra writes the run dir's ``.hydra/``."""
        holder = self._read()
        if holder is not None and self._alive(holder):
            raise ConfigError(self._in_use(holder))

    def _in_use(self, holder: dict) -> str:
        return (
            f"{self.path.parent} is in use by another {holder.get('what', 'run')}: PID {holder.get('pid')} on "
            f"{holder.get('host')} (since {holder.get('started', '?')}; lock file {self.path}). Two trainings "
            "in one run dir overwrite each other's checkpoints: wait for it, stop it, or use another "
            "hydra.run.dir"
            + (" (if that process is gone, delete the lock file)" if holder.get("host") != self.owner["host"] else "")
        )

    def release(self) -> None:
        """Remove the lock if it is still ours."""
        if self.held:
            self.held = False
            if self._read() == self.owner:
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass

    def _create(self) -> bool:
        tmp = self.path.with_name(f"{LOCK_FILE}.tmp-{os.getpid()}")
        try:
            with open(tmp, "w") as handle:
                json.dump(self.owner, handle)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(tmp, self.path)  # atomic, and fails if the lock exists
            except FileExistsError:
                return False
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def _read(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError, RecursionError):
            return None
        return holder if isinstance(holder, dict) else None

    def _alive(self, holder: dict) -> bool:
        """Whether the holder may still run: another host's process cannot be checked (assumed alive)."""
        if holder.get("host") != self.owner["host"]:
            return True
        pid = holder.get("pid")
        if not isinstance(pid, int) or pid <= 0:
            return False
        if pid == os.getpid():
            return False  # this process's own leftover (e.g. an earlier run in the same process that crashed)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # exists, another user's
        return True

    def _remove_if_unchanged(self, holder: dict | None) -> None:
        if self._read() == holder:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
