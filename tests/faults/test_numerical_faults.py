"""NaN / Inf in training: the run stops naming the step and the loss term, leaving checkpoints/last and
best_model as they were; trainer.skip_nonfinite=true skips such steps and logs how many to MLflow."""

import math
from pathlib import Path

import numpy as np
import paddle
import pytest
from image_lists import write_image_lists
from mlflow.tracking import MlflowClient
from mlflow_stores import new_store
from safetensors.numpy import load_file
from tiny import TINY_MODEL

import recog
from recog.errors import NonFiniteError, RecogError
from recog.losses import TripletLossV2
from recog.stages import train
from recog.utils import checkpoint

STEPS = 3  # per epoch


@pytest.fixture(scope="module")
def lists(tmp_path_factory):
    """Random 12x12 PNGs of 5 classes in train / query lists; the dataset overrides."""
    return write_image_lists(tmp_path_factory.mktemp("numerical_lists"), (("train", 40), ("query", 20)))


def _overrides(lists, tmp_path, *extra):
    new_store(tmp_path)  # a migrated MLflow store for the runs (tests/mlflow_stores.py)
    return [
        *TINY_MODEL,
        "loss=ce_triplet",
        "trainer.epochs=2",
        f"trainer.steps_per_epoch={STEPS}",
        "trainer.log_every=1",
        "mlflow.experiment_name=numerics",
        "export.after_train=false",
        # The faults are injected by a patched loss counting its Python calls: a compiled step
        # (trainer.compile) traces such Python side effects once, so these tests run in dygraph.
        "trainer.compile=false",
        *lists,
        f"paths.output_root={tmp_path}",
        *extra,
    ]


def _inject(monkeypatch, at_calls, make_bad, before=None):
    """Patch the triplet term so that its n-th training call (n in ``at_calls``, from 1: the global step)
    returns ``make_bad(value)``; ``before(n)`` runs first at those calls."""
    real = TripletLossV2.forward
    calls = [0]

    def forward(self, inputs, labels):
        value = real(self, inputs, labels)
        calls[0] += 1
        if calls[0] in at_calls:
            if before is not None:
                before(calls[0])
            return make_bad(value, inputs)
        return value

    monkeypatch.setattr(TripletLossV2, "forward", forward)


def _files(directory: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def _runs(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    return client, client.search_runs([client.get_experiment_by_name("numerics").experiment_id])


@pytest.mark.slow
def test_nan_loss_term_stops_naming_step_and_term_and_keeps_the_checkpoints(tmp_path, lists, monkeypatch):
    run_dir = tmp_path / "run"
    snapshot = {}

    def remember(_):  # the files as they are when the bad step runs: epoch 1 done, checkpointed
        snapshot["last"] = _files(run_dir / "checkpoints" / "last")
        snapshot["best"] = _files(run_dir / "best_model")

    bad_step = STEPS + 2  # the second step of epoch 2
    _inject(monkeypatch, {bad_step}, lambda value, _: value * float("nan"), before=remember)
    with pytest.raises(NonFiniteError) as caught:
        train.run(recog.compose(_overrides(lists, tmp_path)), run_dir)

    error = caught.value
    assert isinstance(error, RecogError)  # run.py: the message, exit code 2
    assert error.step == bad_step and math.isnan(error.terms["triplet_v2"]) and math.isfinite(error.terms["ce"])
    message = str(error)
    assert f"step {bad_step} (epoch 2)" in message and "'triplet_v2'" in message and "'ce'" not in message
    assert "trainer.skip_nonfinite=true" in message

    # Nothing was written after the bad step: the same bytes, still loadable.
    assert _files(run_dir / "checkpoints" / "last") == snapshot["last"]
    assert _files(run_dir / "best_model") == snapshot["best"]
    state = checkpoint.load_state(run_dir / "checkpoints" / "last")
    assert state["epoch"] == 1 and state["step"] == STEPS
    model = recog.build_model(checkpoint.load_config(run_dir / "best_model"))
    checkpoint.load_model_weights(run_dir / "best_model", model)
    assert all(np.isfinite(p.numpy()).all() for p in model.parameters())

    _, (run,) = _runs(tmp_path)
    assert run.info.status == "FAILED"


def test_a_nan_gradient_with_finite_losses_names_the_parameters(tmp_path, lists, monkeypatch):
    # 0 * sqrt(x - x): the value is 0, its gradient 0 * inf = NaN, reaching the model's parameters.
    _inject(monkeypatch, {2}, lambda value, inputs: value + 0.0 * paddle.sqrt(inputs - inputs).sum())
    with pytest.raises(NonFiniteError) as caught:
        train.run(recog.compose(_overrides(lists, tmp_path, "mlflow.enabled=false")), tmp_path / "run")
    message = str(caught.value)
    assert caught.value.step == 2 and all(math.isfinite(v) for v in caught.value.terms.values())
    assert message.startswith("non-finite gradient at step 2 (epoch 1): ")
    assert "model.backbone.conv1.conv.weight" in message and " more (loss terms finite: ce = " in message
    assert not (tmp_path / "run" / "checkpoints").exists()  # the first epoch never finished


@pytest.mark.slow
def test_skip_mode_completes_and_logs_the_skip_count(tmp_path, lists, monkeypatch, caplog):
    bad_steps = {2, STEPS + 1}
    _inject(monkeypatch, bad_steps, lambda value, _: value + float("inf"))
    run_dir = tmp_path / "run"
    best = train.run(recog.compose(_overrides(lists, tmp_path, "trainer.skip_nonfinite=true")), run_dir)

    assert "recall_at_1" in best
    client, (run,) = _runs(tmp_path)
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "skipped_steps")
    assert max(m.step for m in history) == 2 * STEPS and run.data.metrics["skipped_steps"] == len(bad_steps)
    assert [m.value for m in sorted(history, key=lambda m: m.step) if m.step <= STEPS] == [0, 1, 1]
    state = checkpoint.load_state(run_dir / "checkpoints" / "last")
    assert state["skipped_steps"] == len(bad_steps) and state["finished"] is True
    weights = load_file(str(run_dir / "checkpoints" / "last" / "model.safetensors"))
    assert all(np.isfinite(w).all() for w in weights.values())  # the bad updates were never applied
    assert "non-finite loss at step 2 (epoch 1): loss term 'triplet_v2'" in caplog.text


@pytest.mark.slow
def test_an_absurd_learning_rate_ends_the_cli_run_with_one_clear_message(tmp_path, lists, run_cli):
    args = [
        "stage=train",
        *_overrides(
            lists,
            tmp_path,
            "optimizer.lr=1e35",
            "scheduler.warmup_epochs=0",
            "mlflow.enabled=false",
            f"hydra.run.dir={tmp_path / 'run'}",
        ),
    ]
    result = run_cli(*args)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "Traceback" not in output
    assert "non-finite" in output and "at step " in output and "trainer.skip_nonfinite=true" in output
