"""How the tests run recog's commands.

In this process: ``cli(*args)`` runs ``recog.app.main(args)``, which is what ``python run.py ARGS``
runs after start-up (run.py is ``sys.exit(main(sys.argv[1:]))``); its exit status and what it printed
come back as a ``subprocess.CompletedProcess`` (the ``run_cli`` fixture of conftest.py binds it to
the test's ``capfd``). ``script(name, *args)`` does the same for ``scripts/NAME``. Every test whose
subject is not the process itself uses them: messages and exit codes, runs, sweeps with the basic launcher.

As a real process: ``run_py`` / ``start_py`` (``python run.py ARGS``), ``run_python`` (any script),
for what only a process shows: signals, kills, the launcher's ranks, what start-up imports, the
README's commands. They start as from a terminal: SIGINT at its default action (``env
--default-signal=INT``) whatever this test process inherited (a ``cmd &`` job of a non-interactive
shell inherits SIGINT ignored, and recog keeps an inherited ignore).

A test waits for a point of a run through what the code writes: ``trainer.progress_file`` (see
``progress``), ``checkpoints/last/state.json``, a log line; ``wait_for`` polls it with a deadline.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN_PY = ROOT / "run.py"
FROM_A_TERMINAL = ["env", "--default-signal=INT"]


def python_argv(*args) -> list[str]:
    """``python ARGS`` started as from a terminal (module docstring)."""
    return [*FROM_A_TERMINAL, sys.executable, *map(str, args)]


def environment(threads: int = 1, **extra) -> dict:
    """This process's environment with ``OMP_NUM_THREADS=threads`` (and ``extra``)."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), **extra}


def run_python(*args, cwd=ROOT, env=None, timeout=600, **kwargs) -> subprocess.CompletedProcess:
    """``python ARGS`` in a new process, output captured as text."""
    return subprocess.run(
        python_argv(*args),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment() if env is None else env,
        **kwargs,
    )


def run_py(*args, cwd=ROOT, env=None, timeout=600, **kwargs) -> subprocess.CompletedProcess:
    """``python run.py ARGS`` in a new process."""
    return run_python(RUN_PY, *args, cwd=cwd, env=env, timeout=timeout, **kwargs)


def start_py(args, log_path: Path, env=None, script=RUN_PY) -> subprocess.Popen:
    """``python run.py ARGS`` (or ``script``) started, stdout and stderr into ``log_path``."""
    with open(log_path, "w") as log:
        return subprocess.Popen(
            python_argv(script, *args),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment() if env is None else env,
        )


def stop(proc: subprocess.Popen) -> None:
    """Kill ``proc`` if it still runs (a test's ``finally``)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def cli(*args, capfd) -> subprocess.CompletedProcess:
    """``python run.py ARGS`` in this process (``recog.app.main``): its exit status and output
    (``capfd``'s; what was captured before is dropped)."""
    capfd.readouterr()
    code = cli_status(*args)
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(list(args), code, out, err)


def cli_status(*args) -> int:
    """``python run.py ARGS`` in this process: its exit status (its output goes to pytest's capture).
    Not for a command that relaunches under ``paddle.distributed.launch`` (this process would become the
    launcher); a sweep (``-m``) may ask for several processes per job (its launcher's jobs start them)."""
    from recog.app import main

    sweep = any(str(a) in ("-m", "--multirun") for a in args)
    assert sweep or not any(str(a).startswith(("launcher.nproc_per_node=", "launcher.nnodes=")) for a in args), args
    with as_a_new_process():
        return main([str(a) for a in args], script=str(RUN_PY))


@contextlib.contextmanager
def as_a_new_process():
    """What a command run in this process changes and a new process would start without, put back
    afterwards: Hydra's global state (its initialised config search and the job's ``HydraConfig``,
    which recog reads to tell a run.py job or sweep from the Python API) and the logging setup."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    saved = {
        name: (lg.handlers[:], lg.level, lg.propagate, lg.disabled)
        for name, lg in [("", logging.getLogger()), *logging.Logger.manager.loggerDict.items()]
        if isinstance(lg, logging.Logger)
    }
    job = HydraConfig.instance().cfg
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None
    try:
        yield
    finally:
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = job
        for name, (handlers, level, propagate, disabled) in saved.items():
            logger = logging.getLogger(name or None)
            logger.handlers[:], logger.level, logger.propagate, logger.disabled = handlers, level, propagate, disabled


def script(name, *args, capfd) -> subprocess.CompletedProcess:
    """``python scripts/NAME ARGS`` (or ``python NAME ARGS`` for a path) in this process (its
    ``__main__`` block, run with ``runpy``): its exit status and output, as ``cli`` has them."""
    import runpy

    path = name if isinstance(name, Path) else ROOT / "scripts" / name
    saved_argv, saved_path = sys.argv, sys.path[:]
    sys.argv = [str(path), *map(str, args)]
    sys.path.insert(0, str(path.parent))  # as python puts the script's folder first
    capfd.readouterr()
    code = 0
    try:
        with as_a_new_process():
            runpy.run_path(str(path), run_name="__main__")
    except SystemExit as stop:
        code = 0 if stop.code is None else stop.code if isinstance(stop.code, int) else 1
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess([name, *args], code, out, err)


def wait_for(predicate, timeout: float, what: str, proc=None, log: Path | None = None, poll: float = 0.01):
    """Poll ``predicate`` every ``poll`` seconds until it returns a true value (returned) or ``timeout``
    seconds pass (an ``AssertionError`` naming ``what``, with the end of ``log``); with ``proc`` (a
    ``Popen``), also fails as soon as the process ended."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        shown = "" if log is None or not Path(log).is_file() else "\n" + Path(log).read_text(errors="replace")[-3000:]
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (status {proc.returncode}) before {what}{shown}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{shown}")
        time.sleep(poll)


def progress(path: Path) -> dict | None:
    """The run's ``trainer.progress_file`` as last written (``event``, ``epoch``, ``step_in_epoch``,
    ``step``, ...; recog/training/callbacks/progress.py), None before the first."""
    import json

    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None


def reached(path: Path, epoch: int, step_in_epoch: int) -> bool:
    """Whether the run writing the progress file ``path`` has done step ``step_in_epoch`` of ``epoch``
    (from 1), or gone past it."""
    now = progress(path)
    return now is not None and now["step"] >= (epoch - 1) * now["steps"] + step_in_epoch
