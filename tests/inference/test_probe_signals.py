"""Ctrl-C during an export's oneDNN probe is the exporting process's to handle: the probe runs in a
session of its own, so the terminal's SIGINT (sent to the foreground process group) does not kill
it and make a working mode look broken."""

import json
import subprocess
import textwrap
from pathlib import Path

import pytest
from commands import ROOT, python_argv

# In a process group of its own (the test's stand-in for a terminal), started with SIGINT at its
# default as from a terminal: export with cpu_onednn=auto, and once the probe's child process is in
# its own session, SIGINT to the whole group, as Ctrl-C would send it.
SCRIPT = textwrap.dedent("""
    import json, os, signal, sys, threading, time
    from pathlib import Path
    import numpy as np
    import recog
    from recog.inference.export import export_model
    from recog.utils.interrupt import StopRequest

    def probing():  # a child of this process in a session of its own: the probe, past its setsid
        me = str(os.getpid())
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(") ", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[1] == me and fields[3] == stat.parent.name:  # parent, session id
                return True
        return False

    def interrupt():
        while not probing():
            time.sleep(0.01)
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
        python_argv("-c", SCRIPT, tmp_path / "export"),
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
