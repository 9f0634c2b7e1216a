"""SIGTERM mid-epoch, then resume=true: the same weights as an uninterrupted run (one CPU process)."""

import json
import signal
import time

import pytest
from commands import reached, start_py, stop
from dist_helpers import TINY, env, max_difference, wait_for, weights
from mlflow.tracking import MlflowClient
from mlflow_stores import new_store
from safetensors.numpy import load_file

import recog
from recog.stages import train

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("processes")]  # each test starts 2 processes or times a SIGTERM

# Dropout on (Paddle's RNG), random flips on (image lists are mirror invariant), momentum and a
# warmup-cosine schedule, CE + batch-hard triplet: everything that must continue exactly.
CONFIG = TINY + [
    "loss=ce_triplet",
    "trainer.epochs=2",
    "trainer.log_every=1",
    "trainer.eval_every=2",
    "mlflow.experiment_name=resume",
]


def _losses(client, run_id):
    return {m.step: m.value for m in client.get_metric_history(run_id, "loss")}


def test_sigterm_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path, image_lists, single_thread, run_cli):
    store = new_store(tmp_path)  # one MLflow store for both runs (a migrated copy: tests/mlflow_stores.py)
    overrides = CONFIG + image_lists + [f"mlflow.tracking_uri={store}"]
    # The uninterrupted run, in this process with one thread like the subprocesses below.
    train.run(
        recog.compose(overrides + [f"paths.output_root={tmp_path / 'reference'}", "mlflow.experiment_name=reference"]),
        tmp_path / "reference" / "run",
    )
    reference = tmp_path / "reference" / "run" / "checkpoints" / "last"

    root = tmp_path / "interrupted"
    run_dir = root / "run"
    args = ["stage=train", *overrides, f"paths.output_root={root}", f"hydra.run.dir={run_dir}"]
    progress, log = tmp_path / "progress.json", tmp_path / "interrupted.log"
    proc = start_py([*args, f"trainer.progress_file={progress}"], log, env=env())
    try:
        wait_for(lambda: reached(progress, epoch=1, step_in_epoch=5), 120, "5 training steps", proc, log)
        proc.send_signal(signal.SIGTERM)
        sent = time.perf_counter()
        code = proc.wait(timeout=60)
        seconds = time.perf_counter() - sent
    finally:
        stop(proc)
    output = (tmp_path / "interrupted.log").read_text(errors="replace")
    assert code == 128 + signal.SIGTERM, output[-3000:]  # 143: stopped by SIGTERM, after saving
    assert "Traceback" not in output and "resume=true" in output
    state = json.loads((run_dir / "checkpoints" / "last" / "state.json").read_text())
    assert state["epoch"] == 0 and 5 <= state["step_in_epoch"] < 25 and state["finished"] is False  # mid-epoch
    assert set(state["rng"][0]) == {"python", "numpy", "paddle"}
    assert "LR_Scheduler" in state["optimizer"]
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("resume").experiment_id])
    assert run.info.status == "KILLED"

    result = run_cli(*args, "resume=true")  # python run.py ..., in this process (one thread, as the reference)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = run_dir / "checkpoints" / "last"
    assert json.loads((resumed / "state.json").read_text())["finished"] is True
    difference = max_difference(weights(resumed), weights(reference))
    assert difference == 0.0  # bit for bit
    assert (
        max_difference(
            load_file(str(resumed / "optimizer.safetensors")), load_file(str(reference / "optimizer.safetensors"))
        )
        == 0.0
    )

    (run,) = client.search_runs([client.get_experiment_by_name("resume").experiment_id])  # the same run, continued
    assert run.info.status == "FINISHED" and run.info.run_id == state["mlflow_run_id"]
    (reference_run,) = client.search_runs([client.get_experiment_by_name("reference").experiment_id])
    # every step's loss, before and after the interruption, equals the uninterrupted run's: same batches,
    # same flips, same dropout masks
    assert _losses(client, run.info.run_id) == _losses(client, reference_run.info.run_id)
    assert len(_losses(client, run.info.run_id)) == 50
    print(
        f"\nSIGTERM at step {state['step']} -> exit {code} after {seconds:.1f} s; resumed == uninterrupted "
        f"(max difference {difference})"
    )
