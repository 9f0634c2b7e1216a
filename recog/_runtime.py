"""Process-wide settings that must happen before Paddle is imported."""

import contextlib
import io
import logging
import os
import sys
import warnings

_OMP_NOTICE = ("WARNING: OMP_NUM_THREADS set to", "PLEASE USE OMP_NUM_THREADS WISELY.")
# Whether the user exported OMP_NUM_THREADS (kept as is) or recog chose it (the data-parallel
# launcher then divides the cores among the processes of a node).
OMP_NUM_THREADS_FROM_USER = "OMP_NUM_THREADS" in os.environ


def configure_runtime() -> None:
    """Use every core for CPU math and import Paddle without its start-up noise.

    Paddle forces ``OMP_NUM_THREADS=1`` when the variable is unset, so it is set here first
    (a value the user exported wins). Paddle then prints a data-parallel notice for any value
    above 1 and warns that ccache is missing; neither concerns a recog user, so both are dropped
    and anything else Paddle prints at import is passed through.
    """
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    # Paddle's C++ side logs framework notes at WARNING level (e.g. on every jit.save); keep errors.
    os.environ.setdefault("GLOG_minloglevel", "2")
    # faiss logs at INFO which CPU build it picked, including a failed AVX2 import: expected.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)
    # BatchNorm warns on every training forward that it tracks running statistics: it always has.
    warnings.filterwarnings("ignore", message="When training, we now always track global mean")
    if "paddle" in sys.modules:
        return
    captured = io.StringIO()
    with contextlib.redirect_stderr(captured):
        import paddle  # noqa: F401
    for line in captured.getvalue().splitlines(keepends=True):
        if not line.startswith(_OMP_NOTICE):
            sys.stderr.write(line)
