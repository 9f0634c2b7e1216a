"""The tests' warm ``python`` (tests/warm_python) behaves as a fresh interpreter to whoever starts it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import warm_python

PROBE = """
import json, os, signal, sys
stdin = sys.stdin.read()
print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "path0": sys.path[0], "file": __file__,
                  "name": __name__, "env": os.environ.get("MLFLOW_TRACKING_URI"), "stdin": stdin,
                  "umask": os.umask(0), "sigint_ignored": signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
                  "pid": os.getpid(), "parent": os.getppid(), "warm": "paddle" in sys.modules}), flush=True)
sys.stderr.write("to stderr\\n")
how = sys.argv[1]
if how == "code":
    sys.exit(3)
if how == "message":
    sys.exit("a message")
if how == "raise":
    raise ValueError("boom")
if how == "sleep":
    import time
    print("up", flush=True)
    time.sleep(60)
"""

pytestmark = pytest.mark.skipif(not warm_python.enabled(), reason="RECOG_TEST_WARM_PYTHON=0: nothing to compare")


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    folder = tmp_path_factory.mktemp("probe")
    (folder / "probe.py").write_text(PROBE)
    deadline = time.monotonic() + 120
    while not Path(os.environ["RECOG_TEST_WARM_SOCKET"]).exists():  # the server is still importing
        assert time.monotonic() < deadline, "the warm python's server did not start"
        time.sleep(0.2)
    return folder


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def run(python, probe, how, **kwargs):
    kwargs.setdefault("env", os.environ)
    return subprocess.run(
        [python, "probe.py", how, "x y"], cwd=probe, input="in\n", capture_output=True, text=True, timeout=60, **kwargs
    )


def server_log() -> str:
    """The server's note of each request it sent to a fresh interpreter, and why."""
    return (Path(os.environ["RECOG_TEST_WARM_BIN"]).parent / "server.log").read_text()[-3000:]


def report(result):
    return json.loads(result.stdout.splitlines()[0])


@pytest.mark.parametrize("how", ["ok", "code", "message", "raise"])
def test_a_command_sees_and_ends_as_in_a_fresh_interpreter(probe, how):
    env = dict(os.environ, MLFLOW_TRACKING_URI="sqlite:///elsewhere.db")  # one a request may change
    old = os.umask(0o027)
    try:
        warm, fresh = (run(python, probe, how, env=env) for python in (warm_python.python(), sys.executable))
    finally:
        os.umask(old)
    warm_report, fresh_report = report(warm), report(fresh)
    assert warm_report.pop("warm"), server_log()  # the warm one really ran in the server's child
    assert not fresh_report.pop("warm")
    assert warm_report.pop("parent") != os.getpid() == fresh_report.pop("parent")
    assert warm_report.pop("pid") != fresh_report.pop("pid")
    assert warm_report == fresh_report
    assert warm_report["argv"] == ["probe.py", how, "x y"] and warm_report["stdin"] == "in\n"
    assert warm.returncode == fresh.returncode == {"ok": 0, "code": 3, "message": 1, "raise": 1}[how]
    assert warm.stderr == fresh.stderr  # the same traceback, from the script's own frame


def test_signals_reach_the_command_and_its_death_is_the_clients(probe):
    for signum in (signal.SIGTERM, signal.SIGINT):
        proc = subprocess.Popen(
            [warm_python.python(), "probe.py", "sleep"],
            cwd=probe,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        parent = json.loads(proc.stdout.readline())["parent"]  # the server, not the client
        assert parent != proc.pid and proc.stdout.readline() == "up\n"
        proc.send_signal(signum)
        assert proc.wait(timeout=30) == -signum


def test_a_killed_client_takes_its_command_along(probe):
    proc = subprocess.Popen(
        [warm_python.python(), "probe.py", "sleep"],
        cwd=probe,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    command = json.loads(proc.stdout.readline())["pid"]
    assert proc.stdout.readline() == "up\n" and command != proc.pid
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while alive(command):
        assert time.monotonic() < deadline, "the command outlived its killed client"
        time.sleep(0.1)


def test_an_environment_that_could_change_imports_gets_a_fresh_interpreter(probe):
    env = dict(os.environ, FLAGS_check_nan_inf="1")
    result = run(warm_python.python(), probe, "ok", env=env)
    assert result.returncode == 0
    assert report(result)["parent"] == os.getpid() and not report(result)["warm"]


def test_an_ignored_sigint_stays_ignored(probe):
    warm, fresh = (
        run(python, probe, "ok", preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        for python in (warm_python.python(), sys.executable)
    )
    assert report(warm)["sigint_ignored"] and report(fresh)["sigint_ignored"]
    assert report(warm)["warm"], server_log()
