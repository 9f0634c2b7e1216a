"""A real `mlflow models serve --env-manager local` for the tests, on 127.0.0.1: started directly, or
by `make serve` (which checks a downloaded copy of the model first and serves that)."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent  # the environment running the tests: make's VENV


def make_serve(model: str, outputs, port: int) -> list[str]:
    """The `make serve` command line (``-o``: the installed environment is taken as it is)."""
    venv = f"VENV={VENV}"
    return [
        "make",
        "-s",
        "-C",
        str(ROOT),
        "-o",
        f"{VENV}/.installed",
        "serve",
        venv,
        f"MODEL={model}",
        f"OUTPUTS={outputs}",
        f"PORT={port}",
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def served(model: str, tracking_uri: str, cwd, timeout: float = 180, make_outputs=None):
    """Serve ``model`` (a URI or folder) until the block ends; yields ``post(body) -> (status, reply)``.
    With ``make_outputs`` (the OUTPUTS folder) the server is started by `make serve`."""
    port = free_port()
    env = dict(
        os.environ,
        MLFLOW_TRACKING_URI=tracking_uri,
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),  # its uvicorn
    )
    command = [sys.executable, "-m", "mlflow", "models", "serve", "--env-manager", "local", "-m", model]
    command += ["-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    if make_outputs is not None:
        command = make_serve(model, make_outputs, port)
    log_path = Path(cwd) / f"server-{port}.log"  # a file, not a pipe: a full pipe would block the server
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert server.poll() is None, log_path.read_text(errors="replace")[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as reply:
                    if reply.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            assert time.monotonic() < deadline, f"mlflow models serve did not answer /ping within {timeout:.0f} s"
            time.sleep(0.3)

        def post(body, content_type: str = "application/json"):
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations", data=data, headers={"Content-Type": content_type}
            )
            try:
                with urllib.request.urlopen(request, timeout=120) as reply:
                    return reply.status, json.loads(reply.read())
            except urllib.error.HTTPError as error:
                return error.code, json.loads(error.read() or b"null")

        post.port = port
        yield post
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
