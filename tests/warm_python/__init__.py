"""A warm ``python`` for the test session: a command ``python SCRIPT ARGS`` that the tests start runs in a
child forked from a server that has already imported recog, Paddle, MLflow and Hydra (about 4 s of every
``run.py`` process on 2 cores), instead of a fresh interpreter.

The child is its own process with the command's argv, working directory, environment, standard streams,
umask and exit status (see ``server.py``); only the import work is shared. Tests whose subject is the
process itself (signals, pids, what start-up imports or reads) start ``sys.executable`` instead, and so
does every request whose environment could change what is imported. ``RECOG_TEST_WARM_PYTHON=0`` turns
it off: every command then starts a fresh interpreter.

Each pytest process (each xdist worker) starts its own server in ``pytest_configure``
(tests/conftest.py); until it answers, commands run in the real interpreter.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
_server = None
_bin = None


def enabled() -> bool:
    return os.environ.get("RECOG_TEST_WARM_PYTHON", "1") != "0"


def start() -> None:
    """Writes ``<tmp>/bin/python`` and starts the server in the background (exported through the environment
    as ``RECOG_TEST_WARM_SOCKET``, so that the commands' own commands use it too)."""
    global _server, _bin
    if not enabled() or _server is not None:
        return
    folder = Path(tempfile.mkdtemp(prefix="recog-warm-"))
    _bin = folder / "bin"
    _bin.mkdir()
    shim = _bin / "python"
    shim.write_text(f"#!{sys.executable} -SE\n" + (HERE / "client.py").read_text())
    shim.chmod(0o755)
    socket_path = folder / "server.sock"
    env = dict(os.environ, RECOG_TEST_WARM_SOCKET=str(socket_path))
    with open(folder / "server.log", "w") as log:
        _server = subprocess.Popen([sys.executable, str(HERE / "server.py"), str(socket_path)], env=env,
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    os.environ["RECOG_TEST_WARM_SOCKET"] = str(socket_path)


def stop() -> None:
    if _server is not None:
        _server.kill()
        _server.wait()
        shutil.rmtree(_bin.parent, ignore_errors=True)


def python() -> str:
    """The interpreter a test starts a command with: the warm ``python`` when on, else this one."""
    return str(_bin / "python") if _bin is not None else sys.executable


def bin_dir() -> str:
    """A folder to put first on ``PATH`` so that ``python`` in a shell command is :func:`python`."""
    return str(_bin) if _bin is not None else str(Path(sys.executable).parent)
