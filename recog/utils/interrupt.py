"""SIGTERM / SIGINT as a request to stop training cleanly at the next step boundary."""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time


class StopRequest:
    """While active (``with StopRequest() as stop:``), SIGTERM and SIGINT only set ``stop.signum``.

    The training loop checks it between steps (the eval between batches), saves a checkpoint and
    stops. A second SIGINT (Ctrl-C again) raises ``KeyboardInterrupt`` at once; repeated SIGTERMs
    (the launcher sends a few) are ignored. Outside the main thread signals cannot be caught, and
    nothing is installed.

    A SIGINT the process was started with ignored stays ignored (as a ``cmd &`` job of a
    non-interactive shell, or ``nohup``, starts it): the shell ignored it so that Ctrl-C in the
    terminal leaves the job running, and the classic convention is to keep that choice. SIGTERM
    still stops the run cleanly.

    A watchdog makes sure a signal always ends the process within seconds: Python runs a signal
    handler only when the main thread returns to the interpreter, so a main thread blocked for
    good inside a C call (e.g. waiting for a batch from a data-loader thread that died) would
    never see it. The signal also wakes a watchdog thread (``signal.set_wakeup_fd``); if the
    handler has not run ``grace`` seconds later, or the process still runs ``deadline`` seconds
    after the request, the watchdog prints why and exits with 128 + the signal number (the last
    complete checkpoint stays as it was: every write is atomic).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, grace: float = 10.0, deadline: float = 300.0):
        self.signum: int | None = None
        self.grace = grace
        self.deadline = deadline
        self._previous = {}
        self._previous_fd: int | None = None
        self._pipe: tuple | None = None
        self._watchdog: threading.Thread | None = None
        self._closed = threading.Event()

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                if sig == signal.SIGINT and signal.getsignal(sig) == signal.SIG_IGN:
                    continue
                self._previous[sig] = signal.signal(sig, self._handle)
            self._start_watchdog()
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        self._stop_watchdog()

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @staticmethod
    def name(signum: int) -> str:
        return signal.Signals(signum).name

    def _start_watchdog(self) -> None:
        try:
            read, write = os.pipe()
            os.set_blocking(write, False)
            self._previous_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        except (OSError, ValueError):
            return
        self._pipe = (read, write)
        self._closed.clear()
        self._watchdog = threading.Thread(target=self._watch, args=(read,), name="recog-stop-watchdog", daemon=True)
        self._watchdog.start()

    def _stop_watchdog(self) -> None:
        if self._pipe is None:
            return
        signal.set_wakeup_fd(self._previous_fd if self._previous_fd is not None else -1)
        self._closed.set()
        read, write = self._pipe
        try:
            os.write(write, b"\0")  # wakes the watchdog, which then ends
        except OSError:
            pass
        if self._watchdog is not None:
            self._watchdog.join(timeout=2)
        for fd in (read, write):
            try:
                os.close(fd)
            except OSError:
                pass
        self._pipe = self._watchdog = None

    def _watch(self, read: int) -> None:
        received: int | None = None
        since = 0.0
        while not self._closed.is_set():
            timeout = None if received is None else 0.2
            try:
                ready, _, _ = select.select([read], [], [], timeout)
                data = os.read(read, 64) if ready else b""
            except OSError:
                return
            if self._closed.is_set():
                return
            for value in data:
                if value in (int(s) for s in self.SIGNALS) and received is None:
                    received, since = value, time.monotonic()
            if received is None:
                continue
            waited = time.monotonic() - since
            if self.signum is None and waited > self.grace:
                self._exit(
                    received,
                    f"the main thread did not respond to it within {self.grace:.0f} s (blocked, "
                    "e.g. waiting for a data-loader thread that failed)",
                )
            if waited > self.deadline:
                self._exit(received, f"the run did not stop within {self.deadline:.0f} s of it")

    def _exit(self, signum: int, why: str) -> None:
        sys.stderr.write(
            f"\nrecog: {self.name(signum)} received but {why}: exiting now. Files written so far are "
            "complete (atomic writes); resume=true continues from the last checkpoint.\n"
        )
        sys.stderr.flush()
        os._exit(128 + signum)
