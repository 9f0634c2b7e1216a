"""What `make ui` opens: the view tags recog writes on its experiments, and the URL it prints.

(The browser side, that MLflow's UI honours them, is scripts/check_mlflow_ui.py: it needs Chromium.)
"""

import json
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from mlflow_stores import new_store

import recog
from recog.tracking import MlflowTracker
from recog.tracking.store import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG
from recog.tracking.ui import RUN_NAME_WIDTH, VIEW_TAG, main, runs_url

ROOT = Path(__file__).resolve().parents[2]


def start_run(root: Path, stage: str = "train", *overrides: str) -> str:
    new_store(root)  # migrated once per test process (tests/mlflow_stores.py)
    cfg = recog.compose([f"paths.output_root={root}", f"stage={stage}", *overrides])
    tracker = MlflowTracker(cfg, stage=stage, run_dir=root)
    tracker.finish()
    return tracker.run_id


def view_of(client: MlflowClient, name: str) -> dict:
    return json.loads(client.get_experiment_by_name(name).tags[VIEW_TAG])


@pytest.mark.slow
def test_experiments_carry_the_model_training_kind_and_a_runs_view_of_the_monitored_metric(tmp_path):
    start_run(tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("recog")
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    view = view_of(client, "recog")
    assert view["orderByKey"] == "metrics.`recall_at_1`" and view["orderByAsc"] is False
    assert view["selectedColumns"][:2] == ["metrics.`recall_at_1`", "metrics.`mAP`"]
    assert view["columnOrder"][:2] == ["attributes.`Run Name`", "metrics.`recall_at_1`"]  # beside the name
    assert view["columnWidths"]["attributes.`Run Name`"] == RUN_NAME_WIDTH >= 300  # names of ~40 characters


@pytest.mark.slow
def test_a_training_run_sets_the_view_to_its_monitor_and_other_stages_leave_it(tmp_path):
    start_run(tmp_path)
    start_run(tmp_path, "train", "trainer.monitor=mAP")
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    view = view_of(client, "recog")
    assert view["orderByKey"] == "metrics.`mAP`"
    assert view["selectedColumns"][:2] == ["metrics.`mAP`", "metrics.`recall_at_1`"]
    start_run(tmp_path, "predict")  # its config's monitor is the default: not a reason to change the view
    assert view_of(client, "recog")["orderByKey"] == "metrics.`mAP`"


@pytest.mark.slow
def test_make_ui_prints_the_runs_of_the_experiment_with_the_newest_run(tmp_path, capsys):
    start_run(tmp_path, "train", "mlflow.experiment_name=older")
    start_run(tmp_path, "train", "mlflow.experiment_name=newer")
    started = time.time_ns() // 1_000_000
    while time.time_ns() // 1_000_000 == started:  # MLflow's start times are in ms: the next run's is later
        pass
    start_run(tmp_path, "train", "mlflow.experiment_name=older")  # the newest run is in the older experiment
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    older = client.get_experiment_by_name("older").experiment_id
    assert main(["--output-root", str(tmp_path), "--port", "5999", "--host", "0.0.0.0", "--dry-run"]) == 0
    first, where, command = capsys.readouterr().out.splitlines()
    url = f"http://127.0.0.1:5999/#/experiments/{older}/runs?workflowType=machine_learning&viewStateShareKey=recog"
    assert first == f"MLflow UI: {url}" and url == runs_url("http://127.0.0.1:5999", older)
    assert "'older'" in where and "model-training view" in where
    assert command.endswith(
        f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db --host 0.0.0.0 --port 5999 --workers 1"
    )


@pytest.mark.slow
def test_make_ui_gives_an_experiment_made_elsewhere_the_view_of_its_newest_training_run(tmp_path, capsys):
    client = MlflowClient(new_store(tmp_path))
    experiment = client.create_experiment("by_hand")  # no tags, e.g. made by another tool
    run = client.create_run(experiment, tags={"recog.stage": "train"})
    client.log_param(run.info.run_id, "trainer.monitor", "mINP")
    assert main(["--output-root", str(tmp_path), "--dry-run"]) == 0
    assert f"/#/experiments/{experiment}/runs?" in capsys.readouterr().out
    assert view_of(client, "by_hand")["orderByKey"] == "metrics.`mINP`"


def test_make_ui_without_a_store_prints_the_ui_address_and_creates_nothing(tmp_path, capsys):
    assert main(["--output-root", str(tmp_path / "none"), "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "MLflow UI: http://127.0.0.1:5000"
    assert not (tmp_path / "none").exists()


def test_the_make_target_runs_this_module():
    shown = subprocess.run(
        ["make", "-n", "-o", "install", "ui", "PORT=5123"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    assert "-m recog.tracking.ui --output-root outputs --host 127.0.0.1 --port 5123" in shown.stdout
