"""``mlflow.register_best=true`` on a single run: its export (or best_model) becomes a model version."""

from mlflow.tracking import MlflowClient

import recog
from recog.tracking import MlflowTracker


def test_a_finished_run_registers_its_best_model_then_its_export(tmp_path):
    cfg = recog.compose([f"paths.output_root={tmp_path}", "mlflow.register_best=true", "mlflow.model_name=shop"])
    for name in ("best_model", "export"):
        (tmp_path / "run" / name).mkdir(parents=True)
        (tmp_path / "run" / name / "file.bin").write_bytes(name.encode())
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")

    training = MlflowTracker(cfg, stage="train", run_dir=tmp_path / "run")
    training.log_artifact(tmp_path / "run" / "best_model")
    training.finish()
    # stage=export adds export/ to the training run (its status unchanged) and registers that.
    exporting = MlflowTracker(cfg, stage="export", run_id=training.run_id, keep_status=True)
    exporting.log_artifact(tmp_path / "run" / "export", "export")
    exporting.finish()
    failed = MlflowTracker(cfg, stage="train", run_dir=tmp_path / "run")
    failed.log_artifact(tmp_path / "run" / "best_model")
    failed.finish("FAILED")  # not registered

    versions = sorted(client.search_model_versions("name = 'shop'"), key=lambda v: int(v.version))
    assert [(str(v.version), v.run_id) for v in versions] == [("1", training.run_id), ("2", training.run_id)]
    assert versions[0].source.endswith("/best_model") and versions[1].source.endswith("/export")
    latest = client.get_registered_model("shop").latest_versions[0]
    assert str(latest.version) == "2" and client.get_run(training.run_id).info.status == "FINISHED"


def test_register_best_off_registers_nothing(tmp_path):
    cfg = recog.compose([f"paths.output_root={tmp_path}"])
    (tmp_path / "best_model").mkdir()
    (tmp_path / "best_model" / "w").write_bytes(b"w")
    tracker = MlflowTracker(cfg, stage="train", run_dir=tmp_path)
    tracker.log_artifact(tmp_path / "best_model")
    tracker.finish()
    assert MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_registered_models() == []
