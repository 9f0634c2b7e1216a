"""Helpers for the data-parallel tests: tiny CPU configs, processes started the way users start them."""

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from commands import python_argv, wait_for  # noqa: F401  (wait_for: re-exported for the tests here)
from image_lists import write_image_lists
from safetensors.numpy import load_file
from tiny import TINY_MODEL

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("_worker.py")

# Tiny and fast on 2 CPU cores; 5 training classes allow P x K = 2 x 4 on each of 2 ranks.
TINY = [
    *TINY_MODEL,
    "trainer.device=cpu",
    "export.after_train=false",
]


def env(threads: int = 1, **extra) -> dict:
    """The environment of a launched job: ``threads`` OpenMP threads per process, so that features
    computed by 2 processes on 2 cores match a single process bit for bit (rounding differs with
    the thread count)."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), **extra}


def run_py(*args, timeout=300, threads=1, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        python_argv(ROOT / "run.py", *args),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(threads),
        **kwargs,
    )


def launch(nproc: int, script_args, log_dir: Path, timeout=300) -> subprocess.CompletedProcess:
    """``python -m paddle.distributed.launch --nproc_per_node N SCRIPT ARGS`` (the direct way)."""
    return subprocess.run(
        python_argv("-m", "paddle.distributed.launch", "--nproc_per_node", nproc, "--log_dir", log_dir, *script_args),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(),
    )


def weights(path: Path) -> dict:
    return load_file(str(path / "model.safetensors"))


def max_difference(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) if a[k].size else 0.0 for k in a)


def worker_logs(log_dir: Path) -> str:
    return "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(log_dir.glob("workerlog.*"))
    )


@pytest.fixture(scope="session")
def image_lists(tmp_path_factory):  # re-exported by conftest.py
    return write_image_lists(tmp_path_factory.mktemp("image_lists"))


@pytest.fixture()
def single_thread():  # re-exported by conftest.py
    """Run in-process Paddle math on one thread (as each of 2 launched processes does) and restore."""
    import paddle

    import recog  # noqa: F401

    paddle.base.core.set_num_threads(1)
    yield
    paddle.base.core.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))


def children(pid: int) -> list:
    """PIDs whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def rank_of(pid: int):
    """``PADDLE_TRAINER_ID`` of a process started by the launcher (None if unknown or gone)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in environ:
        if item.startswith(b"PADDLE_TRAINER_ID="):
            return int(item.split(b"=", 1)[1])
    return None


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
