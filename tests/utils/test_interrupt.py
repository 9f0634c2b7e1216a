"""StopRequest: SIGTERM / SIGINT become a request the loops check, and always end the process within
seconds, also when the main thread is blocked in a C call and cannot run a Python signal handler."""

import fcntl
import os
import signal
import subprocess
import sys
import termios
import textwrap
import time

import pytest
from commands import ROOT, python_argv, stop, wait_for

from recog.utils.interrupt import StopRequest

# The main thread blocks for good inside one C call (as when it waits for a batch from a data-loader
# thread that died): a single write() to its stdout pipe, larger than the pipe holds, which the test
# never reads. The signals are blocked in the main thread, so the kernel hands them to another thread
# and the write is not interrupted: only the watchdog can act on them.
BLOCKED = textwrap.dedent("""
    import os, signal
    from recog.utils.interrupt import StopRequest

    with StopRequest(grace=1.0) as stop:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        os.write(1, b"x" * (1 << 22))
    os.write(2, b"not reached")
""")


def _pipe_full(fd: int) -> bool:
    """Whether the pipe ``fd`` reads from holds as much as it can (its writer is blocked in write())."""
    waiting = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    return int.from_bytes(waiting, sys.byteorder) >= fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_a_process_whose_main_thread_is_blocked(signum, tmp_path):
    with open(tmp_path / "stderr", "w") as stderr:
        proc = subprocess.Popen(python_argv("-c", BLOCKED), cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr)
    try:
        wait_for(lambda: _pipe_full(proc.stdout.fileno()), 120, "the main thread blocked in write()", proc)
        proc.send_signal(signum)
        code = proc.wait(timeout=60)
    finally:
        stop(proc)
        proc.stdout.close()
    said = (tmp_path / "stderr").read_text()
    assert code == 128 + signum, said[-2000:]
    assert f"{signal.Signals(signum).name} received but the main thread did not respond" in said
    assert "not reached" not in said


def test_a_responsive_main_thread_gets_the_request_and_the_watchdog_stays_quiet():
    with StopRequest(grace=0.2) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not stop.requested and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)  # past the grace: the watchdog must not end this process
    assert stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is not stop._handle  # handlers restored
    assert stop._pipe is None and signal.set_wakeup_fd(-1) == -1  # the wakeup fd restored


def test_a_second_ctrl_c_raises_keyboard_interrupt_at_once(sigint_default):
    with pytest.raises(KeyboardInterrupt):
        with StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            while not stop.requested:
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)


def test_a_sigint_the_process_was_started_with_ignored_stays_ignored():
    """A ``cmd &`` job of a non-interactive shell (or nohup) starts with SIGINT ignored, so that Ctrl-C
    in the terminal leaves it running: recog keeps that; SIGTERM still stops the run."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopRequest() as stop:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            assert not stop.requested
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.signum == signal.SIGTERM
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
