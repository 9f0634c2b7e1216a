"""A warm ``python`` for the test session: a command ``python SCRIPT ARGS`` that the tests start runs in a
child forked from a server that has already imported recog, Paddle, MLflow and Hydra (about 4 s of every
``run.py`` process on 2 cores), instead of a fresh interpreter.

The child is its own process with the command's argv, working directory, environment, standard streams,
umask and exit status (see ``server.py``); only the import work is shared. Tests whose subject is the
process itself (signals, pids, what start-up imports or reads) start ``sys.executable`` instead, and so
does every request whose environment could change what is imported. ``RECOG_TEST_WARM_PYTHON=0`` turns
it off: every command then starts a fresh interpreter.

The session's first pytest process (xdist's controller, which runs no tests, or the only one) starts
the server in ``pytest_configure`` (tests/conftest.py) and the workers inherit it through
``RECOG_TEST_WARM_SOCKET`` / ``RECOG_TEST_WARM_BIN``; until it answers, commands run in the real
interpreter.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
_server = None


def enabled() -> bool:
    return os.environ.get("RECOG_TEST_WARM_PYTHON", "1") != "0"


def start() -> None:
    """Writes ``<tmp>/bin/python`` and starts the server in the background; both are exported through
    the environment, to the xdist workers and to the commands' own commands."""
    global _server
    if not enabled() or os.environ.get("RECOG_TEST_WARM_BIN"):
        return
    folder = Path(tempfile.mkdtemp(prefix="recog-warm-"))
    (folder / "bin").mkdir()
    shim = folder / "bin" / "python"
    shim.write_text(f"#!{sys.executable} -SE\n" + (HERE / "client.py").read_text())
    shim.chmod(0o755)
    os.environ["RECOG_TEST_WARM_SOCKET"] = str(folder / "server.sock")
    os.environ["RECOG_TEST_WARM_BIN"] = str(folder / "bin")
    with open(folder / "server.log", "w") as log:
        _server = subprocess.Popen(
            [sys.executable, str(HERE / "server.py"), str(folder / "server.sock")],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop() -> None:
    """Ends the server this process started, if any."""
    if _server is not None:
        _server.kill()
        _server.wait()
        shutil.rmtree(Path(os.environ["RECOG_TEST_WARM_BIN"]).parent, ignore_errors=True)


def python() -> str:
    """The interpreter a test starts a command with: the warm ``python`` when on, else this one."""
    folder = os.environ.get("RECOG_TEST_WARM_BIN")
    return str(Path(folder) / "python") if folder else sys.executable


def bin_dir() -> str:
    """A folder to put first on ``PATH`` so that ``python`` in a shell command is :func:`python`."""
    return os.environ.get("RECOG_TEST_WARM_BIN") or str(Path(sys.executable).parent)
