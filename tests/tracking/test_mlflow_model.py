"""A training run's MLflow Model, as MLflow users load, register, browse and serve it.

One tiny training run (image lists, sqlite store) is shared by the module: it exports its best
model at the end (``export.after_train``) and logs it as ``runs:/<run id>/model``.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from image_lists import write_image_lists
from mlflow.tracking import MlflowClient

import recog
from recog.inference import ExportedModel
from recog.stages import evaluate, predict, train
from recog.tracking.datasets import dataset_record
from recog.tracking.mlflow_model import tracking_uri
from recog.utils.manifest import IntegrityError

ROOT = Path(__file__).resolve().parents[2]


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
    train.run(recog.compose(overrides), root / "run")
    run_id = json.loads((root / "run" / "best_model" / "state.json").read_text())["mlflow_run_id"]
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return root, overrides, run_id, MlflowClient(uri), uri


def _images(seed=0, count=3, size=(37, 52)):
    return np.random.default_rng(seed).integers(0, 256, (count, *size, 3), dtype=np.uint8)


def _reference(root, images):
    return ExportedModel(root / "run" / "export", device="cpu").predict_images(list(images))


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
    (version,) = client.search_model_versions("name = 'shop'")
    assert version.run_id == run_id and version.source.startswith("models:/m-")  # the MLflow Model, not a folder


@pytest.mark.slow
def test_the_mlflow_model_has_a_signature_an_example_and_requirements_and_no_pickle(trained, tmp_path):
    _, _, run_id, _, uri = trained
    with tracking_uri(uri):
        local = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(tmp_path)))
        info = mlflow.models.get_model_info(f"runs:/{run_id}/model")
    flavor = info.flavors["python_function"]
    assert flavor["loader_module"] == "recog.tracking.mlflow_model" and flavor["data"] == "data/export"
    inputs, outputs = info.signature.inputs.to_dict()[0], info.signature.outputs.to_dict()[0]
    assert inputs["tensor-spec"]["dtype"] == "uint8" and list(inputs["tensor-spec"]["shape"]) == [-1, -1, -1, 3]
    assert outputs["tensor-spec"]["dtype"] == "float32" and list(outputs["tensor-spec"]["shape"]) == [-1, 16]
    assert info.saved_input_example_info is not None
    requirements = (local / "requirements.txt").read_text()
    assert re.search(r"^paddlepaddle(-gpu)?==", requirements, re.M) and "numpy==" in requirements
    assert (local / "data" / "export" / "manifest.json").is_file()
    assert not [p for p in local.rglob("*") if p.suffix in (".pkl", ".pickle", ".cloudpickle")]


@pytest.mark.slow  # the module's trained run
def test_a_tampered_mlflow_model_is_refused_on_load(trained, tmp_path):
    _, _, run_id, _, uri = trained
    with tracking_uri(uri):
        local = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(tmp_path)))
    params = local / "data" / "export" / "inference.pdiparams"
    params.write_bytes(params.read_bytes()[:-4096])
    with pytest.raises(IntegrityError, match="inference.pdiparams is truncated"):
        mlflow.pyfunc.load_model(str(local))


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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_the_exported_features(trained, tmp_path):
    """The real `mlflow models serve --env-manager local` (what `make serve` runs), on 127.0.0.1 only."""
    root, _, run_id, _, uri = trained
    port = _free_port()
    env = dict(
        os.environ,
        MLFLOW_TRACKING_URI=uri,
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    )  # its uvicorn
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "--env-manager",
            "local",
            "-m",
            f"runs:/{run_id}/model",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            "1",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server.stdout.read().decode(errors="replace")[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as reply:
                    if reply.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            assert time.monotonic() < deadline, "mlflow models serve did not answer /ping within 180 s"
            time.sleep(0.5)
        images = _images(seed=5, count=2, size=(40, 33))
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": images.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as reply:
            served = np.asarray(json.loads(reply.read())["predictions"], dtype=np.float32)
        np.testing.assert_allclose(served, _reference(root, images), atol=1e-5)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        server.stdout.close()
