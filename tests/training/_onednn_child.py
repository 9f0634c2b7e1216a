"""``python _onednn_child.py``: test_compile's oneDNN check in a process where nothing was compiled
before (see test_onednn_step_trains_the_same_weights_as_dygraph_in_a_fresh_process)."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # test_compile and the shared helpers of tests/

import test_compile  # noqa: E402

test_compile._check_mode("compiled+onednn")
print("oneDNN mode checked")
