"""End to end through the Python API: train -> best_model -> eval, read back from MLflow."""

import json
import re

import cv2
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from mlflow_stores import new_store

import recog
from recog.stages import evaluate, train
from recog.training.trainer import Trainer

TINY = [
    "backbone.scale=0.25",
    "data.image_size=16",
    "data.num_workers=0",
    "neck.embedding_size=32",
    "loss=ce_triplet",
    "trainer.log_every=5",
    "mlflow.experiment_name=e2e",
    "export.after_train=false",
]
# Two short epochs (3 of the digits' 22 batches each, a metric row at every step): what is checked
# is the bookkeeping around them, which 44 steps did not make stronger.
SHORT_EPOCHS = ["trainer.epochs=2", "trainer.steps_per_epoch=3", "trainer.log_every=1"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> list:
    """The digits written once for the module, their eval split cut to every 4th of its 896 images
    (224, all 5 classes: each eval was most of a test's time): the ``dataset.root`` override."""
    root = tmp_path_factory.mktemp("digits")
    recog.data.load_digits(str(root))
    rows = (root / "Ebay_test.txt").read_text().splitlines()
    (root / "Ebay_test.txt").write_text("\n".join(rows[:1] + rows[1::4]) + "\n")
    assert len(recog.data.load_digits(str(root)).query) == 224  # still complete: not written again
    return [f"dataset.root={root}"]


def _client(root) -> MlflowClient:
    return MlflowClient(f"sqlite:///{root}/mlflow.db")


@pytest.mark.slow
def test_train_then_eval_is_tracked_in_mlflow(tmp_path, digits):
    new_store(tmp_path)  # a migrated MLflow store (tests/mlflow_stores.py)
    overrides = TINY + digits + [f"paths.output_root={tmp_path}", *SHORT_EPOCHS]
    best = train.run(recog.compose(overrides), tmp_path / "run")

    best_dir = tmp_path / "run" / "best_model"
    assert (best_dir / "model.safetensors").is_file() and (best_dir / "config.yaml").is_file()
    assert 0.0 <= best["recall_at_1"] <= 1.0 and best["epoch"] in (1, 2)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == best

    client = _client(tmp_path)
    experiment = client.get_experiment_by_name("e2e")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert re.fullmatch(r"train pplcnet x0\.25 arcmargin \d\d:\d\d", run.info.run_name)  # stage and what differs
    params = run.data.params
    assert params["backbone.scale"] == "0.25" and params["head.margin"] == "0.2"
    assert params["head.class_num"] == "5"  # followed the dataset: digits 0-4
    assert {
        "loss",
        "ce",
        "triplet_v2",
        "lr",
        "images_per_sec",
        "recall_at_1",
        "recall_at_5",
        "recall_at_10",
        "mAP",
        "best_epoch",
    } <= set(run.data.metrics)
    assert run.data.metrics["recall_at_1"] == pytest.approx(best["recall_at_1"])  # the best model's, as headline
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert steps == list(range(1, 7))  # 2 epochs x 3 steps, each logged
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"best_model", "metrics.json", "config.yaml", "retrieval.png", "worst_queries.png"} <= artifacts
    picture = cv2.imread(str(tmp_path / "run" / "retrieval.png"))
    assert picture is not None and picture.shape[0] > picture.shape[1] / 6 > 0  # 8 rows of 6 tiles
    assert "best_model/model.safetensors" in {a.path for a in client.list_artifacts(run.info.run_id, "best_model")}

    # The eval stage rebuilds the model from best_model/ and reproduces the training-time eval.
    eval_cfg = recog.compose(overrides + ["stage=eval", f"model_path={best_dir}"])
    metrics = evaluate.run(eval_cfg, tmp_path / "eval")
    for key in ("recall_at_1", "recall_at_5", "mAP"):
        assert metrics[key] == pytest.approx(best[key], abs=1e-6)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == metrics
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`recog.stage` = 'eval'")
    assert len(runs) == 1 and runs[0].data.metrics["recall_at_1"] == pytest.approx(metrics["recall_at_1"])
    eval_artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert {"metrics.json", "retrieval.png", "worst_queries.png"} <= eval_artifacts


@pytest.mark.slow
def test_resume_continues_the_interrupted_run(tmp_path, monkeypatch, digits):
    new_store(tmp_path)
    overrides = TINY + digits + [f"paths.output_root={tmp_path}", *SHORT_EPOCHS]
    real_epoch = Trainer.train_epoch

    def interrupted(self, state):
        if state["epoch"] == 1:  # stop in the second epoch, as Ctrl-C would
            raise KeyboardInterrupt
        return real_epoch(self, state)

    monkeypatch.setattr(Trainer, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train.run(recog.compose(overrides), tmp_path / "runs" / "first")
    monkeypatch.setattr(Trainer, "train_epoch", real_epoch)
    client = _client(tmp_path)
    (run,) = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])
    assert run.info.status == "KILLED"
    steps_before = len(client.get_metric_history(run.info.run_id, "loss"))

    best = train.run(recog.compose(overrides + ["resume=true"]), tmp_path / "runs" / "second")
    assert not (tmp_path / "runs" / "second" / "checkpoints").exists()  # continued the first run's dir
    state = json.loads((tmp_path / "runs" / "first" / "checkpoints" / "last" / "state.json").read_text())
    assert state["epoch"] == 2 and state["finished"] is True and state["step"] == 6
    (run,) = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])  # still one run
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert len(history) > steps_before and max(m.step for m in history) == state["step"]
    assert "recall_at_1" in best


def test_resume_without_an_unfinished_run_is_a_clear_error(tmp_path):
    with pytest.raises(recog.errors.ConfigError, match="no unfinished run"):
        train.run(recog.compose(TINY + [f"paths.output_root={tmp_path}", "resume=true"]), tmp_path / "runs" / "x")


@pytest.mark.slow
def test_loss_parameters_are_trained_and_checkpointed(tmp_path, digits):
    """CenterLoss learns its centres with the model; they land in the last checkpoint."""
    from safetensors.numpy import load_file

    def centres_after(lr, name):
        cfg = recog.compose(
            TINY
            + digits
            + [
                f"paths.output_root={tmp_path}",
                "loss=ce_center",
                "trainer.epochs=1",
                "trainer.steps_per_epoch=2",
                f"optimizer.lr={lr}",
                "scheduler.warmup_epochs=0",
                "mlflow.enabled=false",
            ]
        )
        train.run(cfg, tmp_path / name)
        return load_file(str(tmp_path / name / "checkpoints" / "last" / "loss.safetensors"))

    frozen, trained = centres_after(0.0, "frozen"), centres_after(0.05, "trained")
    key = "terms.center.centers"
    assert list(frozen) == [key] and frozen[key].shape == (5, 32)
    assert not np.allclose(frozen[key], trained[key])
