"""mlflow.log_model_files=false: the run's artifacts hold no copy of best_model/ or export/."""

import pytest
from mlflow.tracking import MlflowClient
from mlflow_stores import new_store

import recog
from recog.tracking import MlflowTracker


@pytest.mark.slow
@pytest.mark.parametrize("copy", [True, False])
def test_model_folders_are_copied_only_when_asked(tmp_path, copy):
    folder = tmp_path / "run" / "best_model"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "run" / "metrics.json").write_text("{}")
    new_store(tmp_path)  # migrated once per test process (tests/mlflow_stores.py)
    cfg = recog.compose([f"paths.output_root={tmp_path}", f"mlflow.log_model_files={str(copy).lower()}"])
    tracker = MlflowTracker(cfg, stage="train", run_dir=tmp_path / "run")
    tracker.log_artifact(folder)
    tracker.log_artifact(tmp_path / "run" / "metrics.json")
    tracker.finish()
    logged = {a.path for a in MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").list_artifacts(tracker.run_id)}
    assert logged == ({"best_model", "metrics.json"} if copy else {"metrics.json"})
