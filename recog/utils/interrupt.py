"""SIGTERM / SIGINT as a request to stop training cleanly at the next step boundary."""

from __future__ import annotations

import signal
import threading
from typing import Optional


class StopRequest:
    """While active (``with StopRequest() as stop:``), SIGTERM and SIGINT only set ``stop.signum``.

    The training loop checks it between steps, saves a checkpoint and stops. A second SIGINT
    (Ctrl-C again) raises ``KeyboardInterrupt`` at once; repeated SIGTERMs (the launcher sends a
    few) are ignored. Outside the main thread signals cannot be caught, and nothing is installed.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

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
