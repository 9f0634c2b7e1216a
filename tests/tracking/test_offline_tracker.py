"""The tracker when the store fails: one warning, every call kept in the run dir, replayed later."""

import json
import logging
import socket

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow_stores import new_store

import recog
from recog.errors import ConfigError
from recog.tracking import MlflowTracker
from recog.tracking.local_record import PROGRESS_FILE, RECORD_FILE, replay


def dead_uri() -> str:
    with socket.socket() as sock:  # a port nothing listens on (closed right away)
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def compose(tmp_path, *overrides):
    return recog.compose(
        [
            f"paths.output_root={tmp_path / 'out'}",
            "mlflow.experiment_name=offline",
            "mlflow.request_retries=0",
            *overrides,
        ]
    )


def sqlite(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}"


def test_unreachable_store_at_start_is_a_config_error_when_required(tmp_path):
    uri = dead_uri()
    with pytest.raises(ConfigError, match="cannot be reached") as error:
        MlflowTracker(compose(tmp_path, f"mlflow.tracking_uri={uri}"), stage="train", run_dir=tmp_path / "run")
    assert uri in str(error.value) and "mlflow.required=false" in str(error.value)
    assert not (tmp_path / "run" / RECORD_FILE).exists()


@pytest.mark.slow
def test_offline_from_start_keeps_the_whole_run_and_replays_it(tmp_path, caplog):
    cfg = compose(tmp_path, f"mlflow.tracking_uri={dead_uri()}", "mlflow.required=false")
    run_dir = tmp_path / "run"
    (run_dir / "best_model").mkdir(parents=True)
    (run_dir / "best_model" / "model.safetensors").write_bytes(b"w")
    with caplog.at_level(logging.WARNING):
        tracker = MlflowTracker(cfg, stage="train", run_dir=run_dir)
        for step in (1, 2, 3):
            tracker.log_metrics({"loss": 3.0 - step}, step=step)
        tracker.log_artifact(run_dir / "best_model")
        tracker.finish()
    assert tracker.run_id is None and tracker.offline
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1
    assert "scripts/replay_mlflow.py" in tracker.describe()

    run_id = replay(run_dir, tracking_uri=sqlite(tmp_path))
    client = MlflowClient(sqlite(tmp_path))
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["recog.stage"] == "train"
    assert run.info.experiment_id == client.get_experiment_by_name("offline").experiment_id
    assert run.data.params["backbone.scale"] == str(cfg.backbone.scale)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(1, 2.0), (2, 1.0), (3, 0.0)]
    assert {a.path for a in client.list_artifacts(run_id, "best_model")} == {"best_model/model.safetensors"}
    with pytest.raises(ConfigError, match="nothing to replay"):
        replay(run_dir, tracking_uri=sqlite(tmp_path))


@pytest.mark.slow
def test_failure_mid_run_is_reported_once_and_an_interrupted_replay_resumes(tmp_path, caplog, monkeypatch):
    new_store(tmp_path / "out")  # migrated once per test process (tests/mlflow_stores.py)
    cfg = compose(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text("{}")
    tracker = MlflowTracker(cfg, stage="train", run_dir=run_dir)
    tracker.log_metrics({"loss": 1.0}, step=1)

    def broken(*args, **kwargs):
        raise MlflowException("database is locked")

    monkeypatch.setattr(tracker.client, "log_batch", broken)
    with caplog.at_level(logging.WARNING):
        for step in range(2, 12):
            tracker.log_metrics({"loss": 1.0 / step}, step=step)
        tracker.log_artifact(run_dir / "metrics.json")
        tracker.finish()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "database is locked" in warnings[0]
    monkeypatch.undo()
    calls = [json.loads(line)["op"] for line in (run_dir / RECORD_FILE).read_text().splitlines()]
    assert calls == ["start"] + ["log_batch"] * 10 + ["log_artifact", "set_terminated"]

    # The artifact went missing: the replay stops there, keeps its progress, then finishes once it is back.
    (run_dir / "metrics.json").rename(run_dir / "moved.json")
    with pytest.raises(ConfigError, match="metrics.json"):
        replay(run_dir)
    assert json.loads((run_dir / PROGRESS_FILE).read_text())["lines"] == 11
    (run_dir / "moved.json").rename(run_dir / "metrics.json")
    assert replay(run_dir) == tracker.run_id
    client = MlflowClient(sqlite(tmp_path))
    history = client.get_metric_history(tracker.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(1, 12))  # each step once: nothing sent twice
    assert client.get_run(tracker.run_id).info.status == "FINISHED"
    assert not (run_dir / PROGRESS_FILE).exists()
