"""StopRequest: SIGTERM / SIGINT become a request the loops check, and always end the process within
seconds, also when the main thread is blocked in a C call and cannot run a Python signal handler."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from recog.utils.interrupt import StopRequest

ROOT = Path(__file__).resolve().parents[2]

# The main thread blocks for good in Paddle's loader (as when its thread dies without the loader
# guard), so only the watchdog can act on SIGTERM.
BLOCKED = textwrap.dedent("""
    import sys, numpy as np
    import recog, paddle
    from recog.utils.interrupt import StopRequest

    class Failing(paddle.io.Dataset):
        def __len__(self):
            return 8
        def __getitem__(self, i):
            raise ValueError("dies in the loader thread")

    with StopRequest(grace=1.0) as stop:
        print("blocking", flush=True)
        for batch in paddle.io.DataLoader(Failing(), batch_size=2, num_workers=0):
            pass
    print("not reached", flush=True)
""")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_a_process_whose_main_thread_is_blocked(signum):
    proc = subprocess.Popen(
        [sys.executable, "-c", BLOCKED],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        assert proc.stdout.readline().strip() == "blocking"
        time.sleep(2)  # the loader thread has died by now; the main thread waits for a batch
        proc.send_signal(signum)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read()
    assert code == 128 + signum, stderr[-2000:]
    assert f"{signal.Signals(signum).name} received but the main thread did not respond" in stderr
    assert "not reached" not in proc.stdout.read()


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


def test_a_second_ctrl_c_raises_keyboard_interrupt_at_once():
    with pytest.raises(KeyboardInterrupt):
        with StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            while not stop.requested:
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
