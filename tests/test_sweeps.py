"""``python run.py -m``: sweeps as one MLflow parent run with a child run per job, the Optuna
search, the joblib launcher, a failed job, the comparison script and the model registry."""

import os
from pathlib import Path

import cv2
import pytest
from commands import cli_status, run_py, script
from image_lists import write_image_lists
from mlflow.tracking import MlflowClient
from mlflow_stores import new_store
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
HEADS = {"arcmargin": "recog.models.heads.ArcMargin", "cosmargin": "recog.models.heads.CosMargin"}


@pytest.fixture(scope="module")
def lists(tmp_path_factory) -> Path:
    """3 classes x 4 random 12x12 PNGs in train / query lists."""
    root = tmp_path_factory.mktemp("sweep_lists")
    write_image_lists(root, (("train", 12), ("query", 12)), classes=3)
    return root


def tiny(lists: Path, out: Path, train_list: str = "train.txt") -> list:
    return [
        "dataset=image_list",
        f"dataset.root={lists}",
        f"dataset.train_list={train_list}",
        "dataset.query_list=query.txt",
        "data.batch_size=6",
        "data.samples_per_class=2",
        "backbone.scale=0.25",
        "data.image_size=16",
        "trainer.epochs=1",
        "data.num_workers=0",
        f"paths.output_root={out}",
        "export.after_train=false",
    ]  # no export at the end of each job: only the registry test needs one


def store(out: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{out / 'mlflow.db'}")


def parent_and_children(client: MlflowClient, experiment: str = "recog"):
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    (parent,) = client.search_runs([experiment_id], filter_string="tags.`recog.stage` = 'sweep'")
    children = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return parent, children


@pytest.fixture(scope="module")
def grid_sweep(lists, tmp_path_factory):
    """A 2 x 2 grid (head x head.margin) with the basic launcher."""
    out = tmp_path_factory.mktemp("grid")
    new_store(out)  # a migrated MLflow store (tests/mlflow_stores.py)
    status = cli_status(
        "-m", "head=arcmargin,cosmargin", "head.margin=0.1,0.2", *tiny(lists, out), f"hydra.sweep.dir={out / 'sweep'}"
    )
    return status, out


@pytest.mark.xdist_group("grid_sweep")  # one worker builds the module fixture
@pytest.mark.slow
def test_grid_sweep_is_one_parent_run_with_a_child_per_job(grid_sweep):
    status, out = grid_sweep
    assert status == 0
    parent, children = parent_and_children(store(out))
    assert parent.info.status == "FINISHED"
    assert "head=arcmargin,cosmargin head.margin=0.1,0.2" in parent.data.tags["recog.sweep_overrides"]
    assert parent.data.tags["recog.swept_keys"] == "head head.margin"
    assert len(children) == 4 and all(child.info.status == "FINISHED" for child in children)

    combos = set()
    for child in children:
        tags, params = child.data.tags, child.data.params
        head, margin = dict(item.split("=") for item in tags["recog.overrides"].split()).values()
        assert params["head._target_"] == HEADS[head] and params["head.margin"] == margin  # the job's values
        assert child.info.run_name.endswith(tags["recog.overrides"])
        assert 0.0 <= child.data.metrics["recall_at_1"] <= 1.0 and "best_epoch" in child.data.metrics
        assert (out / "sweep" / tags["recog.sweep_job"] / "best_model" / "model.safetensors").is_file()
        combos.add((head, margin))
    assert combos == {(h, m) for h in HEADS for m in ("0.1", "0.2")}

    # The parent names the best child (the first to reach the best Recall@1) and its values.
    best = max(children, key=lambda c: (c.data.metrics["recall_at_1"], -c.info.start_time))
    assert parent.data.tags["recog.best_run_id"] == best.info.run_id
    assert parent.data.metrics["best_recall_at_1"] == pytest.approx(best.data.metrics["recall_at_1"])
    assert parent.data.params["best.head.margin"] == best.data.params["head.margin"]
    assert HEADS[parent.data.params["best.head"]] == best.data.params["head._target_"]
    assert (out / "sweep" / "comparison.png").is_file()
    client = store(out)
    assert "comparison/comparison.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "comparison")}


@pytest.mark.xdist_group("grid_sweep")  # one worker builds the module fixture
@pytest.mark.slow
def test_compare_runs_prints_the_runs_in_metric_order_and_writes_a_png(grid_sweep, capfd):
    status, out = grid_sweep
    assert status == 0
    parent, children = parent_and_children(store(out))
    png = out / f"comparison_{parent.info.run_id[:8]}.png"  # the default the README names for --sweep
    shown = script("compare_runs.py", "--output-root", out, "--sweep", parent.info.run_id, capfd=capfd)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("#  run"))
    columns = lines[header].split()
    rows = [line.split() for line in lines[header + 2 : header + 6]]
    assert [row[0] for row in rows] == ["1", "2", "3", "4"]
    recall = [float(row[columns.index("Recall@1") + 2]) for row in rows]  # run names hold two words
    by_name = {c.info.run_name.split()[0]: c.data.metrics["recall_at_1"] for c in children}
    assert recall == sorted(recall, reverse=True)
    assert recall == pytest.approx([by_name[row[1]] for row in rows], abs=1e-4)
    picture = cv2.imread(str(png))
    assert picture is not None and picture.shape[0] > 100 and picture.shape[1] > 300
    artifacts = {a.path for a in store(out).list_artifacts(parent.info.run_id, "comparison")}
    assert f"comparison/{png.name}" in artifacts


@pytest.mark.slow
def test_optuna_search_logs_the_best_trial_to_the_parent(lists, tmp_path, run_cli):
    out = tmp_path / "out"
    new_store(out)
    result = run_cli(
        "-m",
        "hparams_search=margin_head",
        "hydra.sweeper.n_trials=3",
        *tiny(lists, out),
        f"hydra.sweep.dir={out / 'sweep'}",
    )
    assert result.returncode == 0, result.stderr
    found = OmegaConf.load(out / "sweep" / "optimization_results.yaml")
    parent, children = parent_and_children(store(out))
    assert len(children) == 3 and parent.info.status == "FINISHED"
    assert parent.data.tags["recog.sweeper"] == "OptunaSweeper"
    assert set(found.best_params) == {"head.margin", "head.scale", "optimizer.lr", "neck.embedding_size"}
    for key, value in found.best_params.items():
        assert parent.data.params[f"best.{key}"] == str(value)
    assert parent.data.metrics["best_recall_at_1"] == pytest.approx(found.best_value)
    assert found.best_value == pytest.approx(max(c.data.metrics["recall_at_1"] for c in children))
    best = next(c for c in children if c.info.run_id == parent.data.tags["recog.best_run_id"])
    assert float(best.data.params["head.margin"]) == pytest.approx(found.best_params["head.margin"])
    sampled = {child.data.params["head.margin"] for child in children}
    assert len(sampled) == 3  # three different trials, each a run with the values it was given


@pytest.mark.parametrize("search", sorted(p.stem for p in (ROOT / "conf" / "hparams_search").glob("*.yaml")))
def test_every_search_space_names_real_keys_and_maximises(search):
    """Each key of an Optuna search space composes with a value from its range."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    import recog  # noqa: F401
    from recog.config import check_overrides
    from recog.config.compose import CONF_DIR
    from recog.config.schema import register_schemas

    register_schemas()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"hparams_search={search}"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert sweeper.storage is None and sweeper.params
    overrides = []
    for key, space in sweeper.params.items():
        (parsed,) = OverridesParser.create().parse_overrides([f"{key}={space}"])
        value = parsed.value()
        if hasattr(value, "list"):  # choice(...)
            sample = value.list[0]
        else:  # interval(...) / tag(log, interval(...))
            sample = value.start
        overrides.append(f"{key}={sample}")
    check_overrides([f"hparams_search={search}", *overrides])  # ConfigError on an unknown key


@pytest.mark.slow
def test_sweep_naming_a_missing_option_fails_before_any_job(lists, tmp_path, run_cli):
    out = tmp_path / "out"
    result = run_cli("-m", "head=arcmargin,nosuchhead", *tiny(lists, out), f"hydra.sweep.dir={out / 'sweep'}")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "nosuchhead" in result.stderr and "cosmargin" in result.stderr
    assert not (out / "sweep").exists() and not (out / "mlflow.db").exists()


@pytest.mark.slow
def test_a_combination_hydra_refuses_runs_no_job_and_leaves_no_parent_run(lists, tmp_path, run_cli):
    out = tmp_path / "out"
    result = run_cli(
        "-m", "head=arcmargin,fc", "head.margin=0.1,0.2", *tiny(lists, out), f"hydra.sweep.dir={out / 'sweep'}"
    )
    assert result.returncode == 1  # Hydra composes every job before launching any
    assert "Could not override 'head.margin'" in result.stderr and "Traceback" not in result.stderr
    assert "Key 'margin' is not in struct" in result.stderr  # FCHead has no margin: Hydra's own message
    assert not (out / "sweep" / "0").exists()
    client = store(out)
    assert client.search_runs([client.get_experiment_by_name("recog").experiment_id]) == []


@pytest.mark.slow
def test_sweep_objective_must_be_an_eval_metric(lists, tmp_path, run_cli):
    out = tmp_path / "out"
    result = run_cli(
        "-m", "head.margin=0.1,0.2", "sweep.objective=accuracy", *tiny(lists, out), f"hydra.sweep.dir={out / 'sweep'}"
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "accuracy" in result.stderr and "recall_at_1" in result.stderr
    assert not (out / "sweep" / "0").exists()


@pytest.mark.slow
@pytest.mark.xdist_group("processes")  # two parallel jobs
def test_joblib_sweep_with_a_failed_job_goes_on_and_registers_the_best(lists, tmp_path):
    """Two parallel jobs (each with half the cores), one of which fails: a FAILED run, the other job
    completes, the parent is summarised at exit and the best job's model is registered."""
    out = tmp_path / "out"
    new_store(out)
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    args = [a for a in tiny(lists, out) if not a.startswith("dataset.train_list=")]
    result = run_py(  # a real process: the jobs' thread counts follow its environment
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "dataset.train_list=missing.txt,train.txt",
        "mlflow.register_best=true",
        "mlflow.model_name=tiny",
        *args,
        "export.after_train=true",
        "export.cpu_onednn=full",
        f"hydra.sweep.dir={out / 'sweep'}",
        env=env,
        timeout=900,
    )
    assert result.returncode == 1  # Hydra ends a sweep with a failed job non-zero, after every job ran
    assert "missing.txt does not exist" in result.stderr and "Traceback" not in result.stderr
    client = store(out)
    parent, children = parent_and_children(client)
    assert parent.data.tags["recog.launcher"] == "JoblibLauncher" and len(children) == 2
    threads = str(max(1, (os.cpu_count() or 1) // 2))
    assert [child.data.tags["recog.omp_num_threads"] for child in children] == [threads, threads]
    by_job = {child.data.tags["recog.overrides"]: child for child in children}
    failed, finished = by_job["dataset.train_list=missing.txt"], by_job["dataset.train_list=train.txt"]
    assert failed.info.status == "FAILED" and "missing.txt" in failed.data.tags["recog.error"]
    assert finished.info.status == "FINISHED" and "best_epoch" in finished.data.metrics
    assert (out / "sweep" / "1" / "best_model" / "model.safetensors").is_file()
    assert parent.info.status == "FAILED" and parent.data.tags["recog.failed_jobs"] == "1"
    assert parent.data.tags["recog.best_run_id"] == finished.info.run_id

    (version,) = client.search_model_versions("name = 'tiny'")  # the sweep's best only, not every job
    assert version.run_id == finished.info.run_id
    assert version.source.startswith("models:/m-")  # its MLflow Model, not a raw folder
    assert parent.data.tags["recog.registered_model"] == "tiny/1 (@champion)"
    assert str(client.get_model_version_by_alias("tiny", "champion").version) == "1"
    import mlflow
    import numpy as np

    from recog.tracking.mlflow_model import tracking_uri

    with tracking_uri(f"sqlite:///{out / 'mlflow.db'}"):
        features = mlflow.pyfunc.load_model("models:/tiny@champion").predict(np.zeros((1, 20, 24, 3), np.uint8))
    assert features.dtype == np.float32 and features.shape[0] == 1
