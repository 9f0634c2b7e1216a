"""recog's MLflow Models: an export (features) or an export with a gallery index (search answers),
``python_function`` flavor, logged as the MLflow Model ``model`` of a run.

(Over 300 lines: what MLflow loads and how recog logs it share one folder layout and are read together.)

Contract (tested in tests/tracking/test_mlflow_model.py and tests/stages/test_index_stage.py)::

    m = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")     # or "models:/recog@champion"
    m.predict(images)   # a feature model: float32 [N, D]
    m.predict(images)   # a search model (stage=index): per image {"decision", "score", "threshold", "matches"}

``images``: encoded PNG / JPEG / WebP files or uint8 ``[N, H, W, 3]`` RGB arrays, in the forms
``recog.tracking.model_input`` lists (over HTTP: ``{"inputs": ...}``, files base64-encoded);
anything else is an ``InputError``, HTTP 400 from ``mlflow models serve``. Each image is prepared
as the export's ``preprocess.json`` says (bilinear resize to S x S, mean / std) and run through
the Paddle Inference predictor. A feature model of a binary-code export (``eval.binarize``)
returns its codes as 0.0 / 1.0. A search model's answers: ``recog.search.searcher``; the request
parameter ``top_k`` (``{"inputs": ..., "params": {"top_k": 3}}``) overrides its default.

The signature describes both image forms (columns ``image``: binary, ``pixels``: integer arrays)
and is marked as MLflow marks type-hint signatures (``is_signature_from_type_hint``): MLflow then
hands requests to the model unparsed and the model checks them itself. (With a plain tensor
signature MLflow casts JSON pixels to uint8 before the model sees them, so 0.5 would silently
become 0; and no plain signature takes both files and arrays.)

The folder holds ``MLmodel``, the environment files, ``data/export/`` (or ``data/search/``: the
export, the index and ``search.json``) and ``recog_model.json``, which lists every other file
with its SHA-256 (``recog.tracking.model_folder``: what MLflow executes on load, and the check
recog makes first). The loader (``_load_pyfunc``, this module, from the installed recog) verifies
the folder and the export's manifest before building the predictor; nothing is unpickled.

One MLflow Model per run: logging again into a run (a re-export) replaces the run's previous
model, which is deleted, unless a registry version uses it: then it stays, tagged
``recog.superseded_by``, and ``runs:/<run>/model`` names the new one.
"""

import contextlib
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from recog.tracking.model_folder import verify as verify_folder
from recog.tracking.model_folder import write_manifest
from recog.tracking.model_input import InputError, image_batch

log = logging.getLogger(__name__)

ARTIFACT_PATH = "model"  # runs:/<run id>/model
DATA_DIR = "export"  # a feature model's data folder inside the MLflow Model; a search model's: "search"
LOADER_MODULE = __name__
ENV_URI = "MLFLOW_TRACKING_URI"
EXAMPLE_SIZE = 48  # the input example: one uint8 [1, 48, 48, 3] image (any size works)
BATCH_SIZE = 32
REGISTERED_TAG = "mlflow.modelVersions"  # set on a logged model by mlflow.register_model
SUPERSEDED_TAG = "recog.superseded_by"
SEARCH_FILE = "search.json"


class FeatureModel:
    """What ``mlflow.pyfunc.load_model`` wraps for an export: ``predict(images) -> float32 [N, D]``.

    The scoring server runs requests in threads: one predictor runs one batch at a time (a lock)."""

    def __init__(self, export_dir, batch_size: int = BATCH_SIZE):
        from recog.inference import ExportedModel

        self.model = ExportedModel(export_dir)  # verifies the export's manifest first
        self.batch_size = int(batch_size)
        self._lock = threading.Lock()

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        batch = image_batch(model_input)
        parts = []
        for images in batch.batches(self.batch_size):
            with self._lock:
                parts.append(self.model.predict_images(images, self.batch_size))
        return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


class SearchModel:
    """What ``mlflow.pyfunc.load_model`` wraps for a search model: ``predict(images) -> list of answers``
    (``params``: ``{"top_k": k}`` overrides the model's number of matches per image)."""

    def __init__(self, folder):
        from recog.search.searcher import GallerySearcher

        self.searcher = GallerySearcher(folder)
        self._lock = threading.Lock()

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> list[dict]:
        from recog.errors import ConfigError
        from recog.search.searcher import check_top_k

        top_k = (params or {}).get("top_k")
        try:
            top_k = None if top_k is None else check_top_k(top_k)
        except ConfigError as error:
            raise InputError(f"params: {error}") from None
        batch = image_batch(model_input)
        answers: list[dict] = []
        for images in batch.batches(BATCH_SIZE):
            with self._lock:
                answers.extend(self.searcher.answer(images, top_k))
        return answers


def _load_pyfunc(data_path: str):
    """MLflow's ``loader_module`` entry point: ``data_path`` is ``<model>/data/export`` or ``.../search``."""
    data_path = Path(data_path)
    verify_folder(data_path.parent.parent)  # every file of the MLflow Model, MLmodel included
    return SearchModel(data_path) if (data_path / SEARCH_FILE).is_file() else FeatureModel(data_path)


def signature(feature_dim: int | None = None, top_k: int | None = None):
    """Inputs: column ``image`` (binary: an encoded file) or ``pixels`` (uint8 RGB [H, W, 3]).
    Outputs: ``float32 [-1, D]`` features, or (``top_k`` given: a search model) one answer per image."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema, TensorSpec
    from mlflow.types.schema import AnyType, Array, Object, Property

    inputs = Schema(
        [
            ColSpec(DataType.binary, "image", required=False),
            ColSpec(Array(Array(Array(DataType.integer))), "pixels", required=False),
        ]
    )
    if top_k is None:
        outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, int(feature_dim)))])
        params = None
    else:
        match = Object(
            [
                Property("id", DataType.long),
                Property("path", DataType.string, required=False),
                Property("label", AnyType()),
                Property("score", DataType.double),
            ]
        )
        answer = Object(
            [
                Property("decision", AnyType()),
                Property("score", DataType.double, required=False),
                Property("threshold", DataType.double, required=False),
                Property("note", DataType.string, required=False),
                Property("matches", Array(match)),
            ]
        )
        outputs = Schema([ColSpec(answer)])
        params = ParamSchema([ParamSpec("top_k", DataType.long, int(top_k))])
    described = ModelSignature(inputs=inputs, outputs=outputs, params=params)
    described._is_signature_from_type_hint = True  # requests reach the model unparsed: it checks them
    return described


def input_example() -> dict:
    """One smooth 48 x 48 RGB test image as a PNG file: ``{"image": [png bytes]}`` (MLflow saves
    the request to post, ``serving_input_example.json``: ``{"inputs": {"image": ["<base64>"]}}``)."""
    import cv2

    return {"image": [cv2.imencode(".png", example_pixels()[0][:, :, ::-1])[1].tobytes()]}


def example_pixels() -> np.ndarray:
    """One smooth RGB test image, ``uint8 [1, 48, 48, 3]``."""
    ramp = np.linspace(0, 255, EXAMPLE_SIZE, dtype=np.float32)
    image = np.stack(
        [
            ramp[None, :].repeat(EXAMPLE_SIZE, 0),
            ramp[:, None].repeat(EXAMPLE_SIZE, 1),
            np.full((EXAMPLE_SIZE, EXAMPLE_SIZE), 128, np.float32),
        ],
        axis=-1,
    )
    return image.astype(np.uint8)[None]


def pip_requirements() -> list[str]:
    """The third-party packages (pinned to this environment's versions) that serving the model needs."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for names in (
        ("paddlepaddle", "paddlepaddle-gpu"),
        ("numpy",),
        ("opencv-python-headless", "opencv-python"),
        ("faiss-cpu", "faiss-gpu"),
        ("mlflow",),
    ):
        for name in names:
            try:
                pins.append(f"{name}=={version(name)}")
                break
            except PackageNotFoundError:
                continue
    return pins


@contextlib.contextmanager
def tracking_uri(uri: str):
    """MLflow's fluent API (``load_model``, registration) against ``uri``; afterwards the previous
    URI and ``MLFLOW_TRACKING_URI`` (which ``mlflow.set_tracking_uri`` exports for child
    processes) are restored exactly, so nothing leaks into later runs or subprocesses."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    previous, exported = utils._tracking_uri, os.environ.get(ENV_URI)
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        utils._tracking_uri = previous
        if exported is None:
            os.environ.pop(ENV_URI, None)
        else:
            os.environ[ENV_URI] = exported


def log_model(uri: str, run_id: str, folder) -> str:
    """Log ``folder`` (an export, or a search folder of ``stage=index``) as the MLflow Model
    ``model`` of run ``run_id`` in the store ``uri``, replacing the run's previous one (module
    docstring); returns the logged model's id (``models:/<id>``). What is logged is a copy of the
    folder, verified (manifests, index binding) before anything is sent."""
    folder = Path(folder).resolve()
    kind = "search" if (folder / SEARCH_FILE).is_file() else "export"
    with tempfile.TemporaryDirectory(prefix="recog-mlflow-model-") as tmp:
        staged = Path(tmp) / ("search" if kind == "search" else DATA_DIR)  # MLflow keeps the folder's name
        shutil.copytree(folder, staged, symlinks=True)
        described, metadata = _describe(staged, kind)
        return _log(uri, run_id, staged, folder, kind, described, metadata)


def _describe(folder: Path, kind: str) -> tuple:
    """``(signature, metadata)`` of a verified folder (an ``IntegrityError`` for a damaged one)."""
    if kind == "search":
        from recog.search.searcher import GallerySearcher

        searcher = GallerySearcher(folder, warn=False)  # verifies the export, the index and their binding
        exported = searcher.model
        metadata = {
            "recog_format": "recog-search",
            "gallery_size": searcher.index.ntotal,
            "index_kind": searcher.index.kind,
            "top_k": searcher.top_k,
            "threshold": None if searcher.threshold is None else searcher.threshold["score"],
            "threshold_source": None if searcher.threshold is None else searcher.threshold["source"],
        }
        described = signature(top_k=searcher.top_k)
        feature_dim, image_size, binarize = exported.feature_dim, exported.image_size, exported.binarize
    else:
        from recog.inference.predictor import load_preprocess

        preprocess = load_preprocess(folder)  # every file checked against the manifest; no predictor built
        feature_dim, image_size = int(preprocess["feature_dim"]), int(preprocess["image_size"])
        binarize = preprocess.get("binarize")
        metadata = {"recog_format": "recog-export"}
        described = signature(feature_dim)
    metadata.update(
        feature_dim=feature_dim,
        image_size=image_size,
        binarize=binarize or "none",
        output="binary codes 0/1" if binarize else "L2-normalised features",
        inputs="encoded PNG / JPEG / WebP files (base64 in JSON) or uint8 [N, H, W, 3] RGB pixels",
    )
    return described, metadata


def _log(uri: str, run_id: str, staged: Path, source: Path, kind: str, described, metadata: dict) -> str:
    import mlflow
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import Model

    client = mlflow.MlflowClient(uri)
    run = client.get_run(run_id)
    previous = run_models(client, run_id)
    logged = client.create_logged_model(
        run.info.experiment_id,
        name=ARTIFACT_PATH,
        source_run_id=run_id,
        tags={"recog.artifact": kind, "recog.source_dir": str(source)},
        params={k: v[:6000] for k, v in run.data.params.items()},
    )
    try:
        with tempfile.TemporaryDirectory(prefix="recog-mlflow-model-") as tmp, tracking_uri(uri), _quiet_mlflow():
            local = Path(tmp) / ARTIFACT_PATH
            model = Model(
                artifact_path=logged.artifact_location,
                model_uuid=logged.model_id,
                run_id=run_id,
                model_id=logged.model_id,
                metadata=metadata,
            )
            mlflow.pyfunc.save_model(
                str(local),
                loader_module=LOADER_MODULE,
                data_path=str(staged),
                mlflow_model=model,
                signature=described,
                input_example=input_example(),
                pip_requirements=pip_requirements(),
            )
            write_manifest(local)  # last: covers MLmodel and every file beside it
            client.log_model_artifacts(logged.model_id, str(local))
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
        client.finalize_logged_model(logged.model_id, "READY")
    except BaseException:
        with contextlib.suppress(Exception):
            client.finalize_logged_model(logged.model_id, "FAILED")
        raise
    _retire(client, previous, logged.model_id)
    log.info(
        "logged %s as MLflow Model %s of run %s (runs:/%s/%s)", source, logged.model_id, run_id, run_id, ARTIFACT_PATH
    )
    return str(logged.model_id)


def run_models(client, run_id: str) -> list:
    """The READY MLflow Models named ``model`` that recog logged with run ``run_id``, newest first."""
    experiment = client.get_run(run_id).info.experiment_id
    found = [
        model
        for model in client.search_logged_models(experiment_ids=[experiment], filter_string=f"name = '{ARTIFACT_PATH}'")
        if model.source_run_id == run_id and str(getattr(model.status, "name", model.status)).endswith("READY")
    ]
    return sorted(found, key=lambda model: model.creation_timestamp, reverse=True)


def logged_model_id(client, run_id: str) -> str | None:
    """The run's current MLflow Model (the newest not superseded); None if there is none."""
    current = [model for model in run_models(client, run_id) if SUPERSEDED_TAG not in model.tags]
    return current[0].model_id if current else None


def _retire(client, previous: list, current: str) -> None:
    """The run's earlier models: deleted, or (used by a registry version) tagged as superseded."""
    for model in previous:
        if "recog.artifact" not in model.tags or SUPERSEDED_TAG in model.tags:
            continue  # not logged by recog, or retired already: left alone
        if model.tags.get(REGISTERED_TAG):
            client.set_logged_model_tags(model.model_id, {SUPERSEDED_TAG: current})
            log.info(
                "the run's previous MLflow Model %s is registered: kept, superseded by %s", model.model_id, current
            )
        else:
            client.delete_logged_model(model.model_id)
            log.info("replaced the run's previous MLflow Model %s by %s", model.model_id, current)


@contextlib.contextmanager
def _quiet_mlflow():
    # MLflow prints the model's environment notes and a progress bar per artifact upload: keep warnings.
    names = ("mlflow.models.model", "mlflow.pyfunc", "mlflow.utils.environment", "mlflow.models.signature")
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
