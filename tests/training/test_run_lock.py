"""One training per run dir: a second training refuses, naming the first; a stale
lock is taken over; the lock goes at the end of the run, also after an error."""

import json
import logging
import os
import socket
import subprocess
import sys

import pytest
from image_lists import write_image_lists
from tiny import TINY_MODEL

import recog
from recog.errors import ConfigError
from recog.stages import train
from recog.training.run_lock import LOCK_FILE, RunLock

TINY = [
    *TINY_MODEL,
    "trainer.steps_per_epoch=1",
    "trainer.epochs=1",
    "mlflow.enabled=false",
]


@pytest.fixture(scope="module")
def lists(tmp_path_factory):
    return write_image_lists(tmp_path_factory.mktemp("lock_lists"), (("train", 40), ("query", 10)))


@pytest.fixture
def other_process():
    """A live process on this host (the first training, as far as the lock can tell)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def _lock(run_dir, pid, host=None):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK_FILE).write_text(
        json.dumps(
            {"host": host or socket.gethostname(), "pid": pid, "what": "training", "started": "2026-01-01 00:00:00"}
        )
    )


def test_a_second_training_into_the_same_run_dir_refuses_naming_the_first(tmp_path, lists, other_process):
    run_dir = tmp_path / "run"
    _lock(run_dir, other_process)
    cfg = recog.compose(TINY + lists + [f"paths.output_root={tmp_path}"])
    with pytest.raises(
        ConfigError, match=rf"in use by another training: PID {other_process} on {socket.gethostname()}"
    ):
        train.run(cfg, run_dir)
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "best_model").exists()
    assert json.loads((run_dir / LOCK_FILE).read_text())["pid"] == other_process  # still the first one's


@pytest.mark.slow
def test_a_stale_lock_is_taken_over_with_a_warning_and_released_at_the_end(tmp_path, lists, caplog):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    run_dir = tmp_path / "run"
    _lock(run_dir, gone.pid)
    with caplog.at_level(logging.WARNING, logger="recog.training.run_lock"):
        train.run(recog.compose(TINY + lists + [f"paths.output_root={tmp_path}"]), run_dir)
    assert f"stale lock {run_dir / LOCK_FILE} of PID {gone.pid}" in caplog.text
    assert (run_dir / "best_model").is_dir() and not (run_dir / LOCK_FILE).exists()


def test_the_lock_is_released_when_the_run_fails(tmp_path, lists, monkeypatch):
    from recog.training.trainer import Trainer

    def fail(*args, **kwargs):
        raise RuntimeError("a failure inside the training")

    monkeypatch.setattr(Trainer, "fit", fail)
    with pytest.raises(RuntimeError, match="a failure inside"):
        train.run(recog.compose(TINY + lists + [f"paths.output_root={tmp_path}"]), tmp_path / "run")
    assert (tmp_path / "run").is_dir() and not (tmp_path / "run" / LOCK_FILE).exists()


def test_the_lock_is_exclusive_and_holds_host_and_pid(tmp_path, other_process):
    with RunLock(tmp_path) as lock:
        held = json.loads((tmp_path / LOCK_FILE).read_text())
        assert held["host"] == socket.gethostname() and held["pid"] == os.getpid()
        assert not lock._create()  # exclusive: a second creation fails while it is held
    assert not (tmp_path / LOCK_FILE).exists()
    _lock(tmp_path, other_process, host="another-host")  # cannot be checked from here: refused
    with pytest.raises(ConfigError, match="on another-host .*delete the lock file"):
        RunLock(tmp_path).acquire()
    assert not list(tmp_path.glob(f"{LOCK_FILE}.tmp-*"))  # no temp files left


@pytest.mark.slow
def test_a_locked_run_dir_is_refused_before_its_hydra_files_are_rewritten(tmp_path, lists, other_process, run_cli):
    """Hydra rewrote the run's .hydra/config.yaml and overrides.yaml before the stage checked the lock:
    run.py checks it first (recog.cli.precheck), so a refused training changes nothing there."""
    from recog.cli import precheck

    run_dir = tmp_path / "run"
    _lock(run_dir, other_process)
    (run_dir / ".hydra").mkdir()
    saved = {name: f"the first run's {name}" for name in ("config.yaml", "overrides.yaml", "hydra.yaml")}
    for name, text in saved.items():
        (run_dir / ".hydra" / name).write_text(text)
    argv = TINY + lists + [f"paths.output_root={tmp_path}", f"hydra.run.dir={run_dir}", "seed=5"]
    with pytest.raises(ConfigError, match=rf"{run_dir} is in use by another training: PID {other_process}"):
        precheck(argv)
    result = run_cli(*argv)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"is in use by another training: PID {other_process}" in result.stderr
    assert {p.name: p.read_text() for p in (run_dir / ".hydra").iterdir()} == saved
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", LOCK_FILE]  # no run.log either


def test_a_rank_of_the_launcher_does_not_check_the_lock_rank_0_holds(tmp_path, lists, other_process, monkeypatch):
    """Every rank runs run.py's checks: rank 1 must not take rank 0's lock for another training's."""
    from recog.cli import precheck

    run_dir = tmp_path / "run"
    _lock(run_dir, other_process)  # rank 0, training
    monkeypatch.setenv("PADDLE_TRAINER_ID", "1")
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "2")
    precheck(TINY + lists + [f"paths.output_root={tmp_path}", f"hydra.run.dir={run_dir}"])
