"""stage=export: a Paddle inference model (and ONNX) that reproduces the trained model's eval features."""

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from mlflow_stores import new_store

import recog
from recog.api import load_splits
from recog.data import build_eval_loader, build_transform
from recog.errors import ConfigError, RecogError
from recog.evaluation import extract_features
from recog.inference import ExportedModel
from recog.inference import export as export_lib
from recog.inference.export import onnx_features
from recog.metrics import binarize
from recog.stages import export, train
from recog.utils import checkpoint

pytestmark = pytest.mark.xdist_group("test_export")  # one xdist worker trains the module's runs once

BACKBONES = {
    "pplcnet": ["backbone.scale=0.25"],
    "resnet_vd": ["backbone=resnet_vd", "backbone.depth=18"],
}
TINY = [
    "data.image_size=32",
    "data.num_workers=0",
    "data.batch_size=20",
    "neck.embedding_size=32",
    "trainer.epochs=1",
    "trainer.steps_per_epoch=1",
    "trainer.log_every=1",
    "mlflow.experiment_name=export",
    "export.after_train=false",
]  # each test exports as it needs


def _client(root) -> MlflowClient:
    return MlflowClient(f"sqlite:///{root}/mlflow.db")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Overrides for a small slice of the digits as image lists (quick train-time eval): written once."""
    root = tmp_path_factory.mktemp("digits")
    splits = recog.data.load_digits(str(root))
    for name, samples in (("train.txt", splits.train[::4]), ("query.txt", splits.query[::20])):
        (root / name).write_text("".join(f"{Path(s.path).relative_to(root)} {s.label}\n" for s in samples))
    return [
        "dataset=image_list",
        f"dataset.root={root}",
        "dataset.train_list=train.txt",
        "dataset.query_list=query.txt",
    ]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store for the module's runs (a migrated copy: tests/mlflow_stores.py)."""
    folder = tmp_path_factory.mktemp("mlflow")
    new_store(folder)
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits, store):
    """One tiny training run per backbone, as `python run.py stage=train` makes it: {name: (root, overrides)}."""
    runs = {}
    for name, overrides in BACKBONES.items():
        root = tmp_path_factory.mktemp(name)
        overrides = (
            overrides
            + TINY
            + digits
            + [f"paths.output_root={root}", f"mlflow.tracking_uri=sqlite:///{store}/mlflow.db"]
        )
        train.run(recog.compose(overrides), root / "run")
        runs[name] = (root, overrides)
    return runs


def _eval_features(model_path: Path, cfg, count: int = 20):
    """Dygraph eval-stage features of the first ``count`` query images, and those images."""
    trained_cfg = checkpoint.load_config(model_path)
    model = recog.build_model(trained_cfg)
    checkpoint.load_model_weights(model_path, model)
    data = trained_cfg.data
    transform = build_transform(data.image_size, data.mean, data.std, train=False, hflip=False)
    loader = build_eval_loader(load_splits(cfg).query[:count], transform, batch_size=8, num_workers=0)
    features, _ = extract_features(model, loader, normalize=bool(trained_cfg.eval.normalize))
    images = np.concatenate([batch.numpy() for batch, _ in loader])
    return features, images, model.embedding_size


# PP-LCNet goes through the default oneDNN probe (cpu_onednn=auto); ResNet_vd skips it to stay quick.
@pytest.mark.slow
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_exported_features_equal_dygraph_eval_features(trained, backbone):
    root, overrides = trained[backbone]
    model_path = root / "run" / "best_model"
    onednn = [] if backbone == "pplcnet" else ["export.cpu_onednn=full"]
    cfg = recog.compose(overrides + ["stage=export", f"model_path={model_path}", "export.onnx=true", *onednn])
    report = export.run(cfg, root / "export_job")

    out = root / "run" / "export"  # default: beside best_model/
    assert report["output_dir"] == str(out.resolve()) and report["passed"] is True
    assert {"inference.json", "inference.pdiparams", "preprocess.json", "export_report.json", "model.onnx"} <= {
        p.name for p in out.iterdir()
    }
    assert not list(out.parent.glob(".export*"))  # no temporary directory left behind
    saved = json.loads((out / "export_report.json").read_text())
    assert saved["max_abs_diff"] == report["max_abs_diff"]
    assert set(saved["max_abs_diff"]) == {"paddle_inference", "paddle_inference_batch1", "onnxruntime"}
    assert all(v < 1e-4 for v in saved["max_abs_diff"].values())
    assert saved["check_input"]["num_images"] == 16 and "eval-split" in saved["check_input"]["source"]
    assert saved["check_input"]["shape"] == [16, 3, 32, 32]
    assert saved["cpu_onednn"] == "full"
    if backbone == "pplcnet":
        assert saved["cpu_onednn_attempts"] == {"full": "ok"}

    # Independently of the stage's own check: eval-stage features vs the predictor and onnxruntime.
    reference, images, width = _eval_features(model_path, cfg)
    exported = ExportedModel(out, device="cpu")
    assert exported.feature_dim == width == 32
    predicted = exported.predict(images)
    assert predicted.dtype == np.float32 and predicted.shape == (len(images), 32)
    assert np.abs(predicted - reference).max() < 1e-4
    assert np.allclose(np.linalg.norm(predicted, axis=1), 1.0, atol=1e-5)  # eval.normalize baked in
    assert np.abs(onnx_features(out / "model.onnx", images) - reference).max() < 1e-4

    preprocess = exported.preprocess
    trained_cfg = checkpoint.load_config(model_path)
    assert preprocess["image_size"] == 32 and preprocess["input"]["layout"] == "NCHW"
    assert preprocess["input"]["channel_order"] == "RGB" and preprocess["input"]["dtype"] == "float32"
    assert preprocess["mean"] == list(trained_cfg.data.mean) and preprocess["std"] == list(trained_cfg.data.std)
    assert preprocess["normalize"] is True and preprocess["binarize"] is None
    assert preprocess["model"]["backbone"] == trained_cfg.backbone._target_
    assert (
        preprocess["model"]["head"] == "recog.models.heads.ArcMargin" and preprocess["model"]["head_exported"] is False
    )
    assert preprocess["model_path"] == str(model_path.resolve())
    assert preprocess["runtime"] == {"cpu_onednn": "full"} and exported.onednn == "full"


@pytest.mark.slow
def test_export_is_an_artifact_of_the_training_run_whose_status_is_unchanged(trained, store):
    root, overrides = trained["pplcnet"]
    model_path = root / "run" / "best_model"
    client = _client(store)
    run_id = checkpoint.load_state(model_path)["mlflow_run_id"]
    experiment = client.get_experiment_by_name("export")
    assert client.get_run(run_id).info.status == "FINISHED"  # as training left it (other exports included)
    client.set_terminated(run_id, status="KILLED")  # whatever it was, export must leave it so
    runs_before = len(client.search_runs([experiment.experiment_id]))

    cfg = recog.compose(
        overrides
        + ["stage=export", f"model_path={model_path}", f"export.output_dir={root / 'exp2'}", "export.cpu_onednn=full"]
    )
    report = export.run(cfg, root / "export_job2")

    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert report["mlflow_run_id"] == run_id
    assert run.data.tags["recog.export_dir"] == str((root / "exp2").resolve())
    files = {a.path for a in client.list_artifacts(run_id, "export")}
    assert {
        "export/inference.json",
        "export/inference.pdiparams",
        "export/preprocess.json",
        "export/export_report.json",
    } <= files
    assert len(client.search_runs([experiment.experiment_id])) == runs_before  # no extra run
    local = Path(client.download_artifacts(run_id, "export/preprocess.json", str(root)))
    assert json.loads(local.read_text())["model_path"] == str(model_path.resolve())


def _untrained_best_model(tmp_path, extra=()):
    """A best_model/ with random weights (no training): for what does not depend on the weights."""
    cfg = recog.compose(
        [
            "backbone.scale=0.25",
            "data.image_size=32",
            "neck.embedding_size=16",
            "head.class_num=5",
            "data.num_workers=0",
            f"paths.output_root={tmp_path}",
            *extra,
        ]
    )
    model = recog.build_model(cfg)
    path = checkpoint.save_checkpoint(
        tmp_path / "run" / "best_model", model, cfg, {"epoch": 1, "mlflow_run_id": "0123456789abcdef0123456789abcdef"}
    )
    return path, cfg, model


@pytest.mark.slow
def test_without_the_training_run_in_the_store_a_new_export_run_is_logged(tmp_path, digits, store):
    model_path, _, _ = _untrained_best_model(tmp_path)  # its state.json names a run id the store does not hold
    cfg = recog.compose(
        [
            "stage=export",
            f"model_path={model_path}",
            f"paths.output_root={tmp_path}",
            f"mlflow.tracking_uri=sqlite:///{store}/mlflow.db",
            "data.num_workers=0",
            "mlflow.experiment_name=exports",
            "export.cpu_onednn=full",
            *digits,
        ]
    )
    export.run(cfg, tmp_path / "job")
    client = _client(store)
    (run,) = client.search_runs([client.get_experiment_by_name("exports").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["recog.stage"] == "export"
    assert run.data.metrics["export_max_abs_diff_paddle_inference"] < 1e-4
    assert "export/preprocess.json" in {a.path for a in client.list_artifacts(run.info.run_id, "export")}


@pytest.mark.slow
def test_binarized_model_exports_real_features_and_predict_applies_the_method(tmp_path):
    model_path, cfg, model = _untrained_best_model(tmp_path, ["neck=tanh", "eval.binarize=sign"])
    # No readable dataset: the check falls back to random input.
    cfg = recog.compose(
        [
            "stage=export",
            f"model_path={model_path}",
            f"paths.output_root={tmp_path}",
            "dataset=sop",
            f"dataset.root={tmp_path / 'no_sop'}",
            "mlflow.enabled=false",
            "export.cpu_onednn=full",
        ]
    )
    report = export.run(cfg, tmp_path / "job")
    assert report["check_input"]["source"].startswith("random input") and report["passed"] is True
    exported = ExportedModel(tmp_path / "run" / "export", device="cpu")
    assert exported.preprocess["binarize"] == "sign" and exported.preprocess["normalize"] is False
    images = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    raw = export_lib.dygraph_features(model, images, normalize=False)  # as eval ranks codes: unnormalised
    real = exported.predict(images, binarize=False)
    assert np.abs(real - raw).max() < 1e-4 and np.abs(real).max() < 1.0  # tanh range, not unit rows
    codes = exported.predict(images)
    assert codes.dtype == np.uint8 and codes.shape == (4, 16)
    assert np.array_equal(codes, binarize(raw, "sign"))


@pytest.mark.slow
def test_a_model_that_crashes_full_onednn_falls_back_to_a_working_mode(tmp_path):
    """Paddle 3.3's oneDNN batch norm without affine parameters (BNNeck) kills the process: the probe
    runs in a child process, so the export survives, records a mode that works, and it reproduces the model."""
    model_path, _, model = _untrained_best_model(tmp_path, ["neck=bnneck"])
    cfg = recog.compose(
        [
            "stage=export",
            f"model_path={model_path}",
            f"paths.output_root={tmp_path}",
            "dataset=sop",
            f"dataset.root={tmp_path / 'no_sop'}",
            "mlflow.enabled=false",
            "export.check_images=4",
        ]
    )
    report = export.run(cfg, tmp_path / "job")
    assert report["cpu_onednn"] in ("no_placement", "off") and report["cpu_onednn_attempts"]["full"] != "ok"
    exported = ExportedModel(tmp_path / "run" / "export", device="cpu")
    assert exported.onednn == report["cpu_onednn"] == exported.preprocess["runtime"]["cpu_onednn"]
    images = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    assert np.abs(exported.predict(images) - export_lib.dygraph_features(model, images, True)).max() < 1e-4


@pytest.mark.slow
def test_a_failed_check_keeps_the_previous_export_and_says_by_how_much(tmp_path, monkeypatch, digits):
    model_path, _, _ = _untrained_best_model(tmp_path)
    args = [
        "stage=export",
        f"model_path={model_path}",
        f"paths.output_root={tmp_path}",
        "data.num_workers=0",
        "mlflow.enabled=false",
        "export.cpu_onednn=full",
        "export.check_images=3",
        *digits,
    ]
    out = tmp_path / "run" / "export"  # an earlier export (as written before manifests), to be kept
    out.mkdir()
    (out / "preprocess.json").write_text('{"format": "recog-export", "earlier": true}')
    real = export_lib.dygraph_features
    monkeypatch.setattr(export_lib, "dygraph_features", lambda *a, **k: real(*a, **k) + 1e-3)
    with pytest.raises(RecogError, match=r"export\.tolerance=0\.0001") as error:
        export.run(recog.compose(args), tmp_path / "job")
    assert "paddle_inference 0.001" in str(error.value)
    assert [p.name for p in out.iterdir()] == ["preprocess.json"] and "earlier" in (out / "preprocess.json").read_text()
    report = json.loads((tmp_path / "run" / "export.failed" / "export_report.json").read_text())
    assert report["passed"] is False and report["max_abs_diff"]["paddle_inference"] == pytest.approx(1e-3, rel=1e-2)


def test_output_dir_that_is_not_an_export_is_not_replaced(tmp_path):
    model_path, _, _ = _untrained_best_model(tmp_path)
    keep = tmp_path / "precious"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    cfg = recog.compose(
        [
            "stage=export",
            f"model_path={model_path}",
            f"export.output_dir={keep}",
            f"paths.output_root={tmp_path}",
            "mlflow.enabled=false",
        ]
    )
    with pytest.raises(ConfigError, match="not a recog export .*notes.txt"):
        export.run(cfg, tmp_path / "job")
    assert (keep / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_a_users_folder_holding_a_preprocess_json_is_refused_and_kept(tmp_path, run_cli):
    """Before manifests, a preprocess.json was enough for export to wipe the folder."""
    model_path, _, _ = _untrained_best_model(tmp_path)
    keep = tmp_path / "mine"
    (keep / "sub").mkdir(parents=True)
    files = {"preprocess.json": '{"format": "recog-export"}', "notes.txt": "mine", "sub/data.bin": "x"}
    for name, text in files.items():
        (keep / name).write_text(text)
    result = run_cli(
        "stage=export",
        f"model_path={model_path}",
        f"export.output_dir={keep}",
        f"paths.output_root={tmp_path}",
        "mlflow.enabled=false",
        f"hydra.run.dir={tmp_path / 'cli'}",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in output
    assert "is not a recog export" in output and "notes.txt" in output
    assert {p.relative_to(keep).as_posix(): p.read_text() for p in keep.rglob("*") if p.is_file()} == files


@pytest.mark.slow
def test_an_export_is_replaced_only_while_it_holds_what_its_manifest_lists(tmp_path, digits):
    model_path, _, _ = _untrained_best_model(tmp_path)
    out = tmp_path / "out"
    cfg = recog.compose(
        [
            "stage=export",
            f"model_path={model_path}",
            f"export.output_dir={out}",
            f"paths.output_root={tmp_path}",
            "mlflow.enabled=false",
            "export.cpu_onednn=full",
            "data.num_workers=0",
            *digits,  # the check's images from the module's digits, not a copy written under tmp_path
        ]
    )
    export.run(cfg, tmp_path / "job")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "export" and set(manifest["files"]) == {
        "inference.json",
        "inference.pdiparams",
        "preprocess.json",
        "export_report.json",
    }
    export.run(cfg, tmp_path / "job")  # an earlier export with nothing else: replaced
    (out / "my_gallery.index").write_bytes(b"user data")
    with pytest.raises(ConfigError, match="files its manifest.json does not list: my_gallery.index"):
        export.run(cfg, tmp_path / "job")
    assert (out / "my_gallery.index").read_bytes() == b"user data"


def _fake_export(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "inference.json").write_text("{}")
    (folder / "preprocess.json").write_text('{"format": "recog-export"}')
    recog.utils.manifest.write_manifest(folder, "export")
    return folder


@pytest.mark.parametrize(
    "add, shown",
    [
        (lambda d: (d / "sub" / "deeper").mkdir(parents=True), "sub/"),  # a nested (empty) folder of the user's
        (lambda d: (d / "link").symlink_to(d.parent), "link"),  # a link to a folder
        (lambda d: (d / "inference.json").unlink() or (d / "inference.json").symlink_to(d / "x"), "inference.json"),
        (lambda d: (d / "dangling").symlink_to(d / "nowhere"), "dangling"),
    ],
)
def test_an_export_holding_folders_or_links_it_did_not_write_is_not_replaced(tmp_path, add, shown):
    out = _fake_export(tmp_path / "out")
    export_lib.check_replaceable(out)  # as written: replaceable
    add(out)
    with pytest.raises(ConfigError, match=f"does not list: {shown}"):
        export_lib.check_replaceable(out)


def test_a_legacy_export_holding_a_link_is_not_replaced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "mine.json").write_text("the user's")
    (out / "preprocess.json").write_text('{"format": "recog-export"}')
    (out / "inference.json").symlink_to(tmp_path / "mine.json")
    with pytest.raises(ConfigError, match="files an export does not write: inference.json"):
        export_lib.check_replaceable(out)


@pytest.mark.slow
def test_model_path_without_weights_is_a_config_error(tmp_path, run_cli):
    model_path, _, _ = _untrained_best_model(tmp_path)
    (model_path / "model.safetensors").unlink()
    cfg = recog.compose(["stage=export", f"model_path={model_path}", f"paths.output_root={tmp_path}"])
    with pytest.raises(ConfigError, match="model.safetensors"):
        export.run(cfg, tmp_path / "job")
    with pytest.raises(ConfigError, match="needs a trained model"):
        export.run(recog.compose(["stage=export", f"paths.output_root={tmp_path}"]), tmp_path / "job")

    result = run_cli(
        "stage=export", f"model_path={model_path}", f"paths.output_root={tmp_path}", f"hydra.run.dir={tmp_path / 'cli'}"
    )
    assert result.returncode == 2, result.stderr
    output = result.stdout + result.stderr
    assert "Traceback" not in output and "model.safetensors" in output and "best_model" in output


def test_export_options_are_typed():
    cfg = recog.compose(["stage=export"])
    assert cfg.export.tolerance == 1e-4 and cfg.export.onnx is False and cfg.export.output_dir is None
    assert cfg.export.check_images == 16 and cfg.export.cpu_onednn.value == "auto"
    with pytest.raises(ConfigError, match="no_placement"):
        recog.compose(["export.cpu_onednn=fast"])
    with pytest.raises(ConfigError, match="export.tolerance"):
        recog.compose(["export.tolerance=small"])
