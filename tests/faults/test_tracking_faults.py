"""Tracking against a real ``mlflow server`` on 127.0.0.1, and what happens when it is missing.

* a training run with ``mlflow.tracking_uri=http://...`` is visible through the REST API;
* server down at start: exit 2 with one paragraph (``mlflow.required=true``, the default), or
  training goes on, keeps every MLflow call in the run dir and replays them later (``false``);
* server killed mid-run: training calls go on, one warning, nothing lost after the replay.
"""

import json
import logging
from pathlib import Path

import pytest
import requests
from commands import script
from image_lists import write_image_lists
from mlflow.tracking import MlflowClient
from mlflow_server import free_port

import recog
from recog.tracking import MlflowTracker
from recog.tracking.local_record import RECORD_FILE, replay

pytestmark = pytest.mark.xdist_group("test_tracking_faults")  # one xdist worker starts the module's MLflow server once


@pytest.fixture(scope="module")
def image_lists(tmp_path_factory) -> Path:
    """3 classes x 4 random 12x12 PNGs in train / query lists."""
    root = tmp_path_factory.mktemp("lists")
    write_image_lists(root, (("train", 12), ("query", 12)), classes=3)
    return root


def tiny_args(lists: Path, out: Path) -> list:
    return [
        "dataset=image_list",
        f"dataset.root={lists}",
        "dataset.train_list=train.txt",
        "dataset.query_list=query.txt",
        "data.batch_size=6",
        "data.samples_per_class=2",
        "backbone.scale=0.25",
        "data.image_size=16",
        "trainer.epochs=1",
        "trainer.log_every=1",
        "data.num_workers=0",
        f"paths.output_root={out}",
        "mlflow.experiment_name=faults",
        "export.after_train=false",
    ]


def rest_search(uri: str, experiment_name: str) -> list:
    """Runs of an experiment, through the REST API itself (not the MLflow client)."""
    found = requests.get(
        f"{uri}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": experiment_name}, timeout=30
    )
    found.raise_for_status()
    experiment_id = found.json()["experiment"]["experiment_id"]
    response = requests.post(f"{uri}/api/2.0/mlflow/runs/search", json={"experiment_ids": [experiment_id]}, timeout=30)
    response.raise_for_status()
    return response.json().get("runs", [])


def metrics_of(rest_run: dict) -> dict:
    return {m["key"]: m["value"] for m in rest_run["data"].get("metrics", [])}


@pytest.mark.slow
def test_training_run_is_visible_through_the_rest_api(mlflow_server, image_lists, tmp_path, run_cli):
    result = run_cli(
        *tiny_args(image_lists, tmp_path / "out"),
        f"mlflow.tracking_uri={mlflow_server.uri}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert result.returncode == 0, result.stderr

    (run,) = rest_search(mlflow_server.uri, "faults")
    assert run["info"]["status"] == "FINISHED"
    best = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics_of(run)["recall_at_1"] == pytest.approx(best["recall_at_1"])  # the headline: the best model's
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["backbone.scale"] == "0.25" and params["mlflow.tracking_uri"] == mlflow_server.uri
    assert not (tmp_path / "out" / "mlflow.db").exists()  # nothing went to the embedded store


@pytest.mark.slow
def test_server_down_at_start_fails_fast_when_required(image_lists, tmp_path, run_cli):
    dead = f"http://127.0.0.1:{free_port()}"
    result = run_cli(
        *tiny_args(image_lists, tmp_path / "out"),
        f"mlflow.tracking_uri={dead}",
        "mlflow.request_retries=0",  # no backoff to wait out (the default's 2 retries sleep 4-5 s)
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert result.returncode == 2, result.stderr
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert dead in output and "mlflow.required=false" in output and "mlflow.enabled=false" in output
    assert not (tmp_path / "run" / "best_model").exists()  # stopped before any training


@pytest.mark.slow
def test_server_down_at_start_not_required_trains_and_replays(mlflow_server, image_lists, tmp_path, run_cli, capfd):
    dead = f"http://127.0.0.1:{free_port()}"
    run_dir = tmp_path / "run"
    args = tiny_args(image_lists, tmp_path / "out") + ["mlflow.experiment_name=offline_start"]
    result = run_cli(
        *args,
        f"mlflow.tracking_uri={dead}",
        "mlflow.required=false",
        "mlflow.request_retries=0",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    warnings = [line for line in output.splitlines() if "WARNING" in line and "MLflow" in line]
    assert len(warnings) == 1 and RECORD_FILE in warnings[0], output
    assert (run_dir / "best_model" / "model.safetensors").is_file()
    assert (run_dir / RECORD_FILE).is_file()

    replayed = script("replay_mlflow.py", run_dir, "--tracking-uri", mlflow_server.uri, capfd=capfd)
    assert replayed.returncode == 0, replayed.stderr
    (run,) = rest_search(mlflow_server.uri, "offline_start")
    assert run["info"]["status"] == "FINISHED"
    best = json.loads((run_dir / "metrics.json").read_text())
    metrics = metrics_of(run)
    assert metrics["recall_at_1"] == pytest.approx(best["recall_at_1"])
    assert metrics["mAP"] == pytest.approx(best["mAP"]) and metrics["best_epoch"] == best["epoch"]
    client = MlflowClient(mlflow_server.uri)
    history = client.get_metric_history(run["info"]["run_id"], "loss")
    assert [m.step for m in history] == [1, 2]  # 12 images in batches of 6, logged every step
    artifacts = {a.path for a in client.list_artifacts(run["info"]["run_id"])}
    assert {"best_model", "metrics.json", "config.yaml"} <= artifacts
    assert not (run_dir / RECORD_FILE).exists()  # renamed once replayed


@pytest.mark.slow
def test_server_killed_mid_run_loses_nothing(mlflow_server, tmp_path, caplog):
    server = mlflow_server  # the module's: killed below, then started again on the same store and port
    cfg = recog.compose(
        [
            f"mlflow.tracking_uri={server.uri}",
            f"paths.output_root={tmp_path / 'out'}",
            "mlflow.experiment_name=killed",
            "mlflow.request_retries=0",
        ]
    )  # no backoff to wait out
    run_dir = tmp_path / "run"
    (run_dir / "best_model").mkdir(parents=True)
    (run_dir / "best_model" / "model.safetensors").write_bytes(b"weights")
    expected = {step: {"loss": 1.0 / step, "lr": 0.01 * step} for step in range(1, 9)}

    tracker = MlflowTracker(cfg, stage="train", run_dir=run_dir)
    for step in range(1, 4):
        tracker.log_metrics(expected[step], step=step)
    server.kill()  # SIGKILL to the server's process group: gone without a goodbye
    try:
        with caplog.at_level(logging.WARNING, logger="recog"):
            for step in range(4, 9):
                tracker.log_metrics(expected[step], step=step)
            tracker.log_artifact(run_dir / "best_model")
            tracker.set_tag("note", "after the server died")
            tracker.finish()
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and RECORD_FILE in warnings[0].getMessage()
        assert tracker.offline and (run_dir / RECORD_FILE).is_file()
        assert (run_dir / "best_model" / "model.safetensors").read_bytes() == b"weights"  # outputs intact

        server.start()  # the same store, the same port
    finally:
        if server.process is None:  # failed before the restart: the module's server stays up for its other tests
            server.start()
    assert replay(run_dir) == tracker.run_id
    client = MlflowClient(server.uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["note"] == "after the server died"
    for key in ("loss", "lr"):
        history = {m.step: m.value for m in client.get_metric_history(tracker.run_id, key)}
        assert history == {step: pytest.approx(values[key]) for step, values in expected.items()}
    assert "best_model/model.safetensors" in {a.path for a in client.list_artifacts(tracker.run_id, "best_model")}
