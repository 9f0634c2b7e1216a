"""The best model's monitored metric is a training run's headline: what MLflow shows as its value
(the latest), listed first; the per-epoch history stays."""

import math

import pytest
from mlflow.tracking import MlflowClient
from mlflow_stores import new_store

import recog
from recog.tracking import MlflowTracker
from recog.tracking.compare import summarize

EPOCHS = [  # (step, eval metrics): the best model is the first epoch's, as on the digits
    (10, {"recall_at_1": 0.96, "mAP": 0.55, "num_queries": 896}),
    (20, {"recall_at_1": 0.90, "mAP": 0.60, "num_queries": 896}),
    (30, {"recall_at_1": 0.80, "mAP": 0.62, "num_queries": 896}),
]


def train_run(root, *overrides: str) -> tuple[MlflowClient, str]:
    """A training run as the train stage logs it: losses every step, an eval per epoch, the best at the end."""
    new_store(root)  # a migrated MLflow store (tests/mlflow_stores.py)
    cfg = recog.compose([f"paths.output_root={root}", *overrides])
    tracker = MlflowTracker(cfg, stage="train", run_dir=root)
    for step, metrics in EPOCHS:
        tracker.log_metrics({"ce": 1.0 / step, "loss": 1.0 / step, "lr": 0.001}, step=step - 5)
        tracker.log_metrics(metrics, step=step)
    monitor = cfg.trainer.monitor
    best_step, best = max(EPOCHS, key=lambda e: e[1][monitor])
    tracker.log_best(dict(best, epoch=best_step // 10), step=EPOCHS[-1][0])
    tracker.finish()
    return MlflowClient(f"sqlite:///{root}/mlflow.db"), tracker.run_id


@pytest.mark.slow
def test_the_run_shows_the_best_models_value_and_keeps_each_epochs(tmp_path):
    client, run_id = train_run(tmp_path)
    metrics = client.get_run(run_id).data.metrics
    assert metrics["recall_at_1"] == 0.96 and metrics["mAP"] == 0.55  # the best model's, not the last epoch's
    assert metrics["best_epoch"] == 1 and not any(k.startswith("best_") and k != "best_epoch" for k in metrics)
    history = [(m.step, m.value) for m in client.get_metric_history(run_id, "recall_at_1")]
    assert math.isnan(history[0][1]) and history[0][0] == 0  # no value before the first eval
    assert history[1:] == [(10, 0.96), (20, 0.90), (30, 0.80), (31, 0.96)]  # every epoch, then the headline
    assert summarize(client.get_run(run_id)).metrics["recall_at_1"] == 0.96


@pytest.mark.slow
def test_the_monitored_metric_is_the_runs_first(tmp_path):
    """MLflow lists a run's metrics in the order they were first logged (its run page's table), and its
    compare view's parallel plot starts with the first metric the runs share."""
    client, run_id = train_run(tmp_path, "trainer.monitor=mAP")
    assert list(client.get_run(run_id).data.metrics)[0] == "mAP"
    assert client.get_run(run_id).data.metrics["mAP"] == 0.62


@pytest.mark.slow
def test_an_unevaluated_run_has_no_value_to_compare(tmp_path):
    new_store(tmp_path)
    cfg = recog.compose([f"paths.output_root={tmp_path}"])
    tracker = MlflowTracker(cfg, stage="train", run_dir=tmp_path)
    tracker.log_metrics({"loss": 2.0}, step=1)
    tracker.finish("KILLED")  # stopped before its first eval
    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(tracker.run_id)
    assert math.isnan(run.data.metrics["recall_at_1"])
    assert "recall_at_1" not in summarize(run).metrics and summarize(run).metrics["loss"] == pytest.approx(2.0)


@pytest.mark.slow
def test_eval_runs_list_the_monitored_metric_first(tmp_path):
    new_store(tmp_path)
    cfg = recog.compose([f"paths.output_root={tmp_path}", "trainer.monitor=mAP", "stage=predict"])
    tracker = MlflowTracker(cfg, stage="predict", run_dir=tmp_path)
    tracker.log_metrics({"recall_at_1": 0.5, "mAP": 0.4}, step=0)
    tracker.finish()
    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(tracker.run_id)
    assert list(run.data.metrics) == ["mAP", "recall_at_1"]
