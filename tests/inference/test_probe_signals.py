"""Ctrl-C during an export's oneDNN probe is the exporting process's to handle: the probe runs in a
session of its own, so the terminal's SIGINT (sent to the foreground process group) does not kill
it and make a working mode look broken."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# In a process group of its own (the test's stand-in for a terminal): export with cpu_onednn=auto,
# and once the probe's child process exists, SIGINT to the whole group, as Ctrl-C would send it.
SCRIPT = textwrap.dedent("""
    import json, os, signal, sys, threading, time
    from pathlib import Path
    import numpy as np
    import recog
    from recog.inference.export import export_model
    from recog.utils.interrupt import StopRequest

    def probing():
        me = str(os.getpid())
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if stat.read_text().split(") ", 1)[1].split()[1] == me:
                    return True
            except (OSError, IndexError):
                pass
        return False

    def interrupt():
        while not probing():
            time.sleep(0.02)
        time.sleep(0.5)  # the probe is importing Paddle
        os.killpg(os.getpgrp(), signal.SIGINT)

    cfg = recog.compose(["backbone.scale=0.25", "data.image_size=32", "neck.embedding_size=16", "head.class_num=3"])
    images = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    threading.Thread(target=interrupt, daemon=True).start()
    with StopRequest() as stop:  # as the train stage has it during its export
        report = export_model(recog.build_model(cfg), cfg, sys.argv[1], images, cpu_onednn="auto")
    print(json.dumps({"signum": stop.signum, "attempts": report["cpu_onednn_attempts"]}))
""")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the probe through /proc")
def test_ctrl_c_during_the_probe_does_not_fail_the_mode_probed(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "export")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        start_new_session=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["signum"] == 2  # the exporting process received it
    assert outcome["attempts"] == {"full": "ok"}  # the probe did not: the first mode works
