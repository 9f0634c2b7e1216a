"""A training run's MLflow Model, as MLflow users load, register, browse and serve it.

One tiny training run (image lists, sqlite store) is shared by the module: it exports its best
model at the end (``export.after_train``) and logs it as ``runs:/<run id>/model``.
"""

import base64
import json
import re
import sys
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pytest
import yaml
from image_lists import write_image_lists
from mlflow.tracking import MlflowClient
from mlflow_stores import new_store
from serving import served

import recog
from recog.inference import ExportedModel
from recog.stages import evaluate, export, predict, train
from recog.tracking import model_folder
from recog.tracking.datasets import dataset_record
from recog.tracking.mlflow_model import SUPERSEDED_TAG, run_models, tracking_uri
from recog.utils.manifest import IntegrityError

pytestmark = pytest.mark.xdist_group("test_mlflow_model")  # one xdist worker builds the module fixture once


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(root, overrides, run id, client, uri)`` of one finished training run with register_best."""
    root = tmp_path_factory.mktemp("mlflow_model")
    data = write_image_lists(root / "data", (("train", 24), ("query", 12)), classes=3)
    overrides = [
        *data,
        "backbone.scale=0.25",
        "data.image_size=32",
        "data.batch_size=6",
        "data.samples_per_class=2",
        "data.num_workers=0",
        "neck.embedding_size=16",
        "trainer.epochs=1",
        "trainer.steps_per_epoch=2",
        f"paths.output_root={root}",
        "mlflow.register_best=true",
        "mlflow.model_name=shop",
        "export.cpu_onednn=full",
    ]
    new_store(root)  # migrated once per test process (tests/mlflow_stores.py)
    train.run(recog.compose(overrides), root / "run")
    run_id = json.loads((root / "run" / "best_model" / "state.json").read_text())["mlflow_run_id"]
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return root, overrides, run_id, MlflowClient(uri), uri


def _images(seed=0, count=3, size=(37, 52)):
    return np.random.default_rng(seed).integers(0, 256, (count, *size, 3), dtype=np.uint8)


def _reference(root, images):
    return ExportedModel(root / "run" / "export", device="cpu").predict_images(list(images))


def _png(image) -> bytes:
    return cv2.imencode(".png", image[:, :, ::-1])[1].tobytes()


@pytest.mark.slow
def test_runs_uri_and_the_registry_load_a_model_whose_features_equal_the_export(trained):
    root, _, run_id, client, uri = trained
    with tracking_uri(uri):
        by_run = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
        by_name = mlflow.pyfunc.load_model("models:/shop/1")
    for size in ((37, 52), (64, 64)):  # any H, W
        images = _images(size=size)
        features = by_run.predict(images)
        assert features.dtype == np.float32 and features.shape == (3, 16)
        np.testing.assert_allclose(features, _reference(root, images), atol=1e-6)
        np.testing.assert_allclose(by_name.predict(images), features, atol=1e-6)
        np.testing.assert_array_equal(by_run.predict([_png(image) for image in images]), features)  # files
    (version,) = client.search_model_versions("name = 'shop'")
    assert version.run_id == run_id and version.source.startswith("models:/m-")  # the MLflow Model, not a folder
    logged = client.get_logged_model(version.source.split("/")[-1])  # the UI's "Registered models" column
    assert json.loads(logged.tags["mlflow.modelVersions"]) == [{"name": "shop", "version": 1}]


@pytest.mark.slow
def test_the_mlflow_model_has_a_signature_an_example_requirements_a_manifest_and_no_pickle(trained, tmp_path):
    _, _, run_id, _, uri = trained
    with tracking_uri(uri):
        local = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(tmp_path)))
        info = mlflow.models.get_model_info(f"runs:/{run_id}/model")
    flavor = info.flavors["python_function"]
    assert flavor["loader_module"] == "recog.tracking.mlflow_model" and flavor["data"] == "data/export"
    columns = {column["name"]: column for column in info.signature.inputs.to_dict()}
    assert columns["image"]["type"] == "binary" and not columns["image"]["required"]  # encoded files
    assert columns["pixels"]["type"] == "array" and not columns["pixels"]["required"]  # uint8 [H, W, 3]
    assert info.signature._is_signature_from_type_hint  # MLflow hands requests over unparsed: no silent cast
    outputs = info.signature.outputs.to_dict()[0]
    assert outputs["tensor-spec"]["dtype"] == "float32" and list(outputs["tensor-spec"]["shape"]) == [-1, 16]
    assert info.saved_input_example_info is not None
    serving_example = json.loads((local / "serving_input_example.json").read_text())
    (encoded,) = serving_example["inputs"]["image"]  # what to post: a base64 PNG
    assert base64.b64decode("".join(encoded.split())).startswith(b"\x89PNG")
    requirements = (local / "requirements.txt").read_text()
    assert re.search(r"^paddlepaddle(-gpu)?==", requirements, re.M) and "numpy==" in requirements
    assert "faiss-cpu==" in requirements
    assert (local / "data" / "export" / "manifest.json").is_file()
    listed = json.loads((local / "recog_model.json").read_text())["files"]
    assert {"MLmodel", "requirements.txt", "data/export/inference.pdiparams"} <= set(listed)
    assert not [p for p in local.rglob("*") if p.suffix in (".pkl", ".pickle", ".cloudpickle")]
    model_folder.verify(local)


@pytest.mark.slow  # the module's trained run
def test_a_tampered_mlflow_model_is_refused_on_load(trained, tmp_path):
    _, _, run_id, _, uri = trained
    with tracking_uri(uri):
        local = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(tmp_path)))
    params = local / "data" / "export" / "inference.pdiparams"
    params.write_bytes(params.read_bytes()[:-4096])
    with pytest.raises(IntegrityError, match="inference.pdiparams was altered after the model was logged"):
        mlflow.pyfunc.load_model(str(local))  # recog's loader checks the folder first


@pytest.mark.slow  # the module's trained run
def test_an_mlmodel_naming_another_loader_is_refused_before_mlflow_imports_it(trained, tmp_path, monkeypatch):
    _, _, run_id, _, uri = trained
    with tracking_uri(uri):
        local = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(tmp_path / "a")))
    (tmp_path / "planted_loader.py").write_text("import pathlib\npathlib.Path(__file__).with_suffix('.ran').touch()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    mlmodel["flavors"]["python_function"]["loader_module"] = "planted_loader"
    (local / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    with pytest.raises(IntegrityError, match="MLmodel was altered"):
        model_folder.load(str(local), tmp_path / "copy")
    assert not (tmp_path / "planted_loader.ran").exists() and "planted_loader" not in sys.modules
    with pytest.raises(Exception):  # noqa: B017 - what MLflow alone does: imports the planted module
        mlflow.pyfunc.load_model(str(local))
    assert (tmp_path / "planted_loader.ran").exists()


@pytest.mark.slow
def test_the_ui_shows_the_training_view_the_dataset_the_model_and_a_telling_name(trained):
    root, overrides, run_id, client, _ = trained
    run = client.get_run(run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert re.fullmatch(r"train pplcnet x0\.25 arcmargin \d\d:\d\d", run.info.run_name)
    (dataset_input,) = run.inputs.dataset_inputs
    dataset = dataset_input.dataset
    assert dataset.name == "lists:data" and json.loads(dataset.source) == {"uri": str((root / "data").resolve())}
    assert {t.key: t.value for t in dataset_input.tags} == {"mlflow.data.context": "train"}
    assert dataset.digest == dataset_record(recog.compose(overrides), "train")["digest"]
    (output,) = run.outputs.model_outputs  # the Models column
    model = client.get_logged_model(output.model_id)
    assert model.name == "model" and model.source_run_id == run_id


def test_the_dataset_digest_follows_the_lists(tmp_path):
    overrides = write_image_lists(tmp_path, (("train", 6), ("query", 6)), classes=3)
    cfg = recog.compose([*overrides, f"paths.output_root={tmp_path}"])
    before = dataset_record(cfg, "train")["digest"]
    assert dataset_record(cfg, "train")["digest"] == before
    with open(tmp_path / "query.txt", "a") as lists:
        lists.write("img/train_0.png 1\n")
    assert dataset_record(cfg, "train")["digest"] != before


@pytest.mark.slow
def test_eval_and_predict_runs_link_to_the_training_run(trained):
    root, overrides, run_id, client, _ = trained
    train_run = client.get_run(run_id)
    evaluate.run(recog.compose([*overrides, "stage=eval", f"model_path={root / 'run' / 'best_model'}"]), root / "eval")
    predict.run(
        recog.compose(
            [
                *overrides,
                "stage=predict",
                f"predict.model_dir={root / 'run' / 'export'}",
                f"predict.input={root / 'data' / 'query.txt'}",
            ]
        ),
        root / "predict",
    )
    runs = {r.data.tags["recog.stage"]: r for r in client.search_runs([train_run.info.experiment_id])}
    for stage in ("eval", "predict"):
        run = runs[stage]
        assert run.info.run_name == f"{stage} {train_run.info.run_name}"
        assert run.data.tags["recog.train_run_id"] == run_id
        link = f"(#/experiments/{train_run.info.experiment_id}/runs/{run_id})"
        assert link in run.data.tags["mlflow.note.content"]
    assert runs["predict"].inputs.dataset_inputs[0].dataset.name == "query"


@pytest.mark.slow
def test_mlflow_models_serve_answers_arrays_and_image_files_and_refuses_anything_else(trained, tmp_path):
    """The real `mlflow models serve --env-manager local` (what `make serve` runs), on 127.0.0.1 only."""
    root, _, run_id, _, uri = trained
    images = _images(seed=5, count=2, size=(40, 33))
    expected = _reference(root, images)
    files = [base64.b64encode(_png(image)).decode() for image in images]
    with served(f"runs:/{run_id}/model", uri, tmp_path) as post:
        for body in ({"inputs": images.tolist()}, {"inputs": {"image": files}}, {"inputs": files}):
            status, reply = post(body)
            assert status == 200, reply
            np.testing.assert_allclose(np.asarray(reply["predictions"], np.float32), expected, atol=1e-5)
        for body, message in (
            ({"inputs": (images / 255).tolist()}, "image 0: pixels must be integers 0-255 (uint8), got float64"),
            ({"inputs": images[0, 0].tolist()}, "got an array of shape [33, 3]"),
            ({"inputs": [files[0], "bm90IGFuIGltYWdl"]}, "image 1: not a PNG, JPEG or WebP file"),
            ({"inputs": ["%%%"]}, "image 0: a string that is not base64"),
        ):
            status, reply = post(body)
            assert status == 400 and message in reply["message"], reply


@pytest.mark.slow
def test_a_re_export_replaces_the_runs_model_and_keeps_a_registered_one(trained):
    """One MLflow Model per run: the module's run registered its model (register_best); exporting the
    same best_model again logs a new model into the run, the registered one stays, marked superseded."""
    root, overrides, run_id, client, uri = trained
    (registered,) = run_models(client, run_id)
    again = [*overrides, "stage=export", f"model_path={root / 'run' / 'best_model'}", "mlflow.register_best=false"]
    export.run(recog.compose(again), root / "export_again")
    current, kept = run_models(client, run_id)
    assert kept.model_id == registered.model_id and kept.tags[SUPERSEDED_TAG] == current.model_id
    export.run(recog.compose(again), root / "export_third")
    newest, still_kept = run_models(client, run_id)  # the unregistered one in between was replaced
    assert still_kept.model_id == registered.model_id and newest.model_id != current.model_id
    with tracking_uri(uri):
        assert mlflow.models.get_model_info(f"runs:/{run_id}/model").model_id == newest.model_id
