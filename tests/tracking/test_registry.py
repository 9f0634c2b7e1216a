"""``mlflow.register_best=true`` on a single run: its MLflow Model (not a raw folder) becomes a model version."""

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from mlflow_stores import new_store

import recog
from recog.inference import ExportedModel
from recog.tracking import MlflowTracker
from recog.tracking.mlflow_model import tracking_uri
from recog.tracking.registry import CHAMPION, register_run_model


@pytest.mark.slow
def test_a_finished_run_registers_its_mlflow_model_which_loads_from_the_registry(tmp_path, tiny_export):
    cfg = recog.compose([f"paths.output_root={tmp_path}", "mlflow.register_best=true", "mlflow.model_name=shop"])
    uri = new_store(tmp_path)  # migrated once per test process (tests/mlflow_stores.py)
    client = MlflowClient(uri)

    training = MlflowTracker(cfg, stage="train", run_dir=tmp_path / "run")
    training.log_model(tiny_export)
    training.finish()
    failed = MlflowTracker(cfg, stage="train", run_dir=tmp_path / "run")
    failed.log_model(tiny_export)
    failed.finish("FAILED")  # not registered

    (version,) = client.search_model_versions("name = 'shop'")
    assert version.run_id == training.run_id and version.source.startswith("models:/m-")
    images = np.random.default_rng(1).integers(0, 256, (2, 40, 30, 3), dtype=np.uint8)
    with tracking_uri(uri):
        features = mlflow.pyfunc.load_model("models:/shop/1").predict(images)
    assert features.dtype == np.float32
    np.testing.assert_allclose(features, ExportedModel(tiny_export).predict_images(list(images)), atol=1e-6)

    assert register_run_model(client, training.run_id, "shop", alias=CHAMPION) == "2"
    assert str(client.get_model_version_by_alias("shop", CHAMPION).version) == "2"


@pytest.mark.slow
def test_a_run_without_an_mlflow_model_registers_nothing_and_says_why(tmp_path, caplog):
    cfg = recog.compose([f"paths.output_root={tmp_path}", "mlflow.register_best=true"])
    new_store(tmp_path)
    (tmp_path / "best_model").mkdir()
    (tmp_path / "best_model" / "w").write_bytes(b"w")
    tracker = MlflowTracker(cfg, stage="train", run_dir=tmp_path)
    tracker.log_artifact(tmp_path / "best_model")  # a raw folder is never registered
    tracker.finish()
    assert MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_registered_models() == []
    assert "logged no MLflow Model" in caplog.text


@pytest.mark.slow
def test_register_best_off_registers_nothing(tmp_path, tiny_export):
    cfg = recog.compose([f"paths.output_root={tmp_path}"])
    new_store(tmp_path)
    tracker = MlflowTracker(cfg, stage="train", run_dir=tmp_path)
    tracker.log_model(tiny_export)
    tracker.finish()
    assert MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_registered_models() == []


def test_using_a_store_leaves_the_process_wide_tracking_uri_as_it_was(tmp_path, monkeypatch):
    import os

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = mlflow.get_tracking_uri()
    with tracking_uri(f"sqlite:///{tmp_path / 'a.db'}"):
        assert mlflow.get_tracking_uri().endswith("a.db") and os.environ["MLFLOW_TRACKING_URI"].endswith("a.db")
    assert "MLFLOW_TRACKING_URI" not in os.environ and mlflow.get_tracking_uri() == before
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # the user's own: kept
    with tracking_uri(f"sqlite:///{tmp_path / 'b.db'}"):
        pass
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:9"
