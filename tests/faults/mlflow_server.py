"""A real ``mlflow server`` on 127.0.0.1 for the tracking tests: started by a test, stopped by its
own pid (its process group) afterwards, with bounded waits."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mlflow_stores import new_store

START_TIMEOUT_S = 180  # a cold start takes 5-40 s on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """``mlflow server`` with a SQLite store and an artifact root in ``root``; ``start`` /
    ``kill`` / ``start`` again keeps the same store and port."""

    def __init__(self, root: Path, port: int):
        self.root = Path(root)
        self.port = port
        self.process = None
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "MlflowServer":
        new_store(path=self.root / "db")  # a migrated store (tests/mlflow_stores.py); kept on a restart
        command = [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'db'}",
            "--default-artifact-root",
            str(self.root / "art"),
        ]
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # no background job runner
        log = open(self.root / "server.log", "ab")
        self.process = subprocess.Popen(
            command, cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )  # its own process group: the uvicorn worker too
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.process.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"mlflow server did not answer within {START_TIMEOUT_S} s: {self.log_tail()}")

    def kill(self, sig=signal.SIGKILL) -> None:
        """Stop the server's process group (``os.killpg`` of its own pid) and reap it."""
        if self.process is None or self.process.poll() is not None and self._group_gone():
            self.process = None
            return
        try:
            os.killpg(self.process.pid, sig)
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 30
        while not self._group_gone() and time.monotonic() < deadline:  # the uvicorn child, after SIGTERM
            time.sleep(0.2)
        self.process = None

    def _group_gone(self) -> bool:
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return True
        return False

    def log_tail(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace")[-2000:] if path.is_file() else ""
