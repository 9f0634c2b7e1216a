"""SIGKILL at random moments, then resume=true: every kill leaves a loadable checkpoints/last, and the
resumed run ends bit for bit where an uninterrupted run ends, with every epoch's metrics in its MLflow run.

A real ``python run.py stage=train`` process is killed three times: at a random step of a random
epoch (the test's choices come from a seeded RNG), while checkpoints/last is being written, and
again at a random step. ``checkpoints/last`` is written at each epoch end, so each resume restarts
at the epoch after the last complete checkpoint; the killed process's MLflow run stays RUNNING and
each resume continues it. The uninterrupted reference run and the final resume are not the subject:
they run ``python run.py`` in this process (``run_cli``, on one thread like the killed processes).
"""

import json
import math
import os
import random
import signal
from pathlib import Path

import numpy as np
import pytest
from commands import reached, start_py, stop, wait_for
from image_lists import write_image_lists
from mlflow.tracking import MlflowClient
from mlflow_stores import new_store
from safetensors.numpy import load_file
from tiny import TINY_MODEL

import recog
from recog.utils import checkpoint

EPOCHS, STEPS = 6, 4  # the kills (KILL_SEED) land in epochs 3 to 5: the last resume still trains
KILL_SEED = 7  # where the test kills: reproducible choices
TIMING_METRICS = {"images_per_sec"}  # wall-clock values: never equal between two runs


@pytest.fixture()
def single_thread():
    """Paddle math in this process on one thread, as in the killed processes (``OMP_NUM_THREADS=1``)."""
    import paddle

    paddle.base.core.set_num_threads(1)
    yield
    paddle.base.core.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))


def _image_lists(root: Path) -> list:
    """Random 12x12 PNGs of 5 classes in train / query / gallery lists; the dataset overrides."""
    return write_image_lists(root, (("train", 60), ("query", 30), ("gallery", 20)))


def _train_args(lists: list, root: Path) -> list:
    # One OpenMP thread (env below) and no loader workers: a CPU run is then reproducible bit for bit.
    return [
        "stage=train",
        *TINY_MODEL,
        "trainer.device=cpu",
        f"trainer.epochs={EPOCHS}",
        f"trainer.steps_per_epoch={STEPS}",
        "trainer.eval_every=1",
        "trainer.log_every=1",
        "mlflow.experiment_name=sigkill",
        "export.after_train=false",
        *lists,
        f"paths.output_root={root}",
        f"hydra.run.dir={root / 'run'}",
    ]


def _writing_last(run_dir: Path) -> bool:
    """Whether a temp directory of checkpoints/last exists (a write, or the removal of the old version)."""
    try:
        return any(name.startswith(".last.tmp-") for name in os.listdir(run_dir / "checkpoints"))
    except FileNotFoundError:
        return False


def _check_last(last: Path, reference_keys: dict) -> int:
    """checkpoints/last is complete and loads; returns its epoch."""
    state = checkpoint.load_state(last)
    model = recog.build_model(checkpoint.load_config(last))
    checkpoint.load_model_weights(last, model)  # every parameter present with its shape
    for name, keys in reference_keys.items():
        assert set(load_file(str(last / name))) == keys, name
    assert state["step"] == state["epoch"] * STEPS and state["step_in_epoch"] == 0  # an epoch-end checkpoint
    return state["epoch"]


def _history(client: MlflowClient, run_id: str) -> dict:
    """``{metric: {step: value}}`` of a run; a step logged again by a resume keeps its last value."""
    keys = client.get_run(run_id).data.metrics
    return {
        key: {m.step: _comparable(m.value) for m in client.get_metric_history(run_id, key)}
        for key in keys
        if key not in TIMING_METRICS
    }


def _comparable(value: float):
    """NaN (the monitored metric's "no value yet" at step 0) as a string, which equals itself."""
    return "nan" if math.isnan(value) else value


def _max_difference(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) if a[k].size else 0.0 for k in a)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path, single_thread, run_cli):
    lists = _image_lists(tmp_path / "data")
    reference_root, root = tmp_path / "reference", tmp_path / "killed"
    new_store(reference_root), new_store(root)  # migrated MLflow stores (tests/mlflow_stores.py)
    reference = run_cli(*_train_args(lists, reference_root))  # the uninterrupted run, in this process
    assert reference.returncode == 0, reference.stderr[-3000:]
    progress = tmp_path / "progress.json"  # where the killed runs are (trainer.progress_file)
    args = _train_args(lists, root) + [f"trainer.progress_file={progress}"]
    run_dir, last = root / "run", root / "run" / "checkpoints" / "last"
    rng = random.Random(KILL_SEED)
    kills = []
    for attempt, moment in enumerate(("random step", "checkpoint write", "random step")):
        done = checkpoint.load_state(last)["epoch"] if attempt else 0
        log_path = tmp_path / f"attempt{attempt}.log"
        progress.unlink(missing_ok=True)
        proc = start_py(args + (["resume=true"] if attempt else []), log_path)
        try:
            if moment == "random step":  # the first kill comes after a checkpoint exists
                epoch, step = max(done, 1) + rng.randint(1, 2), rng.randint(1, STEPS)
                wait_for(lambda: reached(progress, epoch, step), 120, f"epoch {epoch} step {step}", proc, log_path)  # noqa: B023
                where = f"epoch {epoch} step {step}"
            else:
                wait_for(lambda: _writing_last(run_dir), 120, "a checkpoints/last write", proc, log_path, poll=0.0005)
                where = "during a checkpoints/last write"
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=60) == -signal.SIGKILL
        finally:
            stop(proc)
        output = log_path.read_text(errors="replace")
        if attempt:  # continued from the last complete checkpoint, at the start of the next epoch
            assert f"at epoch {done + 1}, step 0 of {STEPS}" in output, output[-3000:]
        if not kills:
            reference_keys = {
                name: set(load_file(str(last / name))) for name in (checkpoint.MODEL_FILE, checkpoint.OPTIMIZER_FILE)
            }
            client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
            run_id = checkpoint.load_state(last)["mlflow_run_id"]
            assert client.get_run(run_id).info.status == "RUNNING"  # nobody could mark it
        epoch_now = _check_last(last, reference_keys)  # never corrupt
        assert epoch_now >= done
        left = sum(name.startswith(".last.tmp-") for name in os.listdir(run_dir / "checkpoints"))
        kills.append(f"{where}: checkpoint of epoch {epoch_now}" + (f", {left} temp dir left" if left else ""))

    done = checkpoint.load_state(last)["epoch"]
    assert done < EPOCHS
    final = run_cli(*args, "resume=true")  # python run.py ..., in this process
    assert final.returncode == 0, final.stderr[-3000:]
    assert f"at epoch {done + 1}, step 0 of {STEPS}" in final.stdout + final.stderr

    reference_run = reference_root / "run"
    state = checkpoint.load_state(last)
    assert state["epoch"] == EPOCHS and state["finished"] is True
    for name in (checkpoint.MODEL_FILE, checkpoint.OPTIMIZER_FILE):  # bit for bit
        assert (
            _max_difference(load_file(str(last / name)), load_file(str(reference_run / "checkpoints" / "last" / name)))
            == 0.0
        ), name
    assert (
        _max_difference(
            load_file(str(run_dir / "best_model" / checkpoint.MODEL_FILE)),
            load_file(str(reference_run / "best_model" / checkpoint.MODEL_FILE)),
        )
        == 0.0
    )
    assert json.loads((run_dir / "metrics.json").read_text()) == json.loads(
        (reference_run / "metrics.json").read_text()
    )
    assert not [n for n in os.listdir(run_dir / "checkpoints") if n != "last"]  # killed writers' temp dirs removed

    (run,) = client.search_runs([client.get_experiment_by_name("sigkill").experiment_id])  # one run, continued
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    history = _history(client, run_id)
    reference_client = MlflowClient(f"sqlite:///{reference_root / 'mlflow.db'}")
    (reference_mlflow,) = reference_client.search_runs(
        [reference_client.get_experiment_by_name("sigkill").experiment_id]
    )
    assert history == _history(reference_client, reference_mlflow.info.run_id)
    assert set(history["loss"]) == set(range(1, EPOCHS * STEPS + 1))  # every step
    # no value yet at step 0, every epoch's eval, and the best model's once more after the last step
    evals = {epoch * STEPS for epoch in range(1, EPOCHS + 1)}
    assert set(history["recall_at_1"]) == {0, *evals, EPOCHS * STEPS + 1}
    print(f"\nSIGKILL {'; '.join(kills)}; resumed == uninterrupted bit for bit")
