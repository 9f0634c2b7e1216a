"""A recog export as an MLflow Model: ``python_function`` flavor, logged with its run at ``model``.

Contract (tested in tests/tracking/test_mlflow_model.py)::

    m = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")     # or "models:/recog@champion"
    features = m.predict(images)   # images: uint8 [N, H, W, 3] RGB, any H, W -> float32 [N, D]

Each image is prepared as the export's ``preprocess.json`` says (``recog.inference.preprocess_image``:
bilinear resize to S x S, mean / std) and run through the Paddle Inference predictor
(``recog.inference.ExportedModel``). A model that ranks binary codes (``eval.binarize``) returns its
codes: 0.0 / 1.0 per bit, float32 [N, D].

The MLflow Model folder holds ``MLmodel`` (flavor, signature, input example), the requirements
files and ``export/`` (the recog export, with its ``manifest.json``). Loading it runs nothing the
folder names beyond MLflow's own parsing: the flavor's ``loader_module`` is this module (imported
from the installed recog, never from the folder), nothing is unpickled, and the export's manifest
is verified before the predictor is built (a damaged file is an ``IntegrityError``). Serving it
(``mlflow models serve --env-manager local``) needs recog installed in the serving environment;
the logged pip requirements list the third-party packages recog's inference needs.
"""

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ARTIFACT_PATH = "model"  # runs:/<run id>/model
DATA_DIR = "export"  # the export's folder inside the MLflow Model
LOADER_MODULE = __name__
ENV_URI = "MLFLOW_TRACKING_URI"
EXAMPLE_SIZE = 48  # the input example: one uint8 [1, 48, 48, 3] image (any size works)


class FeatureModel:
    """What ``mlflow.pyfunc.load_model`` wraps: ``predict(images uint8 [N, H, W, 3]) -> float32 [N, D]``."""

    def __init__(self, export_dir, batch_size: int = 32):
        from recog.inference import ExportedModel

        self.model = ExportedModel(export_dir)  # verifies the export's manifest first
        self.batch_size = int(batch_size)

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        images = as_images(model_input)
        features = self.model.predict_images(list(images), batch_size=self.batch_size)
        return np.ascontiguousarray(features, dtype=np.float32)


def _load_pyfunc(data_path: str) -> FeatureModel:
    """MLflow's ``loader_module`` entry point: ``data_path`` is the model's ``export/`` folder."""
    return FeatureModel(data_path)


def as_images(model_input: Any) -> np.ndarray:
    """``uint8 [N, H, W, 3]`` from an array (or nested lists) of RGB images; ``ValueError`` otherwise."""
    if isinstance(model_input, dict) and len(model_input) == 1:  # a named tensor input
        model_input = next(iter(model_input.values()))
    images = np.asarray(model_input)
    if images.ndim == 3 and images.shape[-1] == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected images as uint8 [N, H, W, 3] RGB, got shape {tuple(images.shape)}")
    if images.dtype != np.uint8:
        if (
            not np.issubdtype(images.dtype, np.number)
            or images.size
            and (images.min() < 0 or images.max() > 255 or not np.all(images == np.round(images)))
        ):
            raise ValueError(f"expected images as uint8 [N, H, W, 3] RGB (0-255), got {images.dtype} values")
        images = images.astype(np.uint8)
    return images


def signature(feature_dim: int):
    """Input ``uint8 [-1, -1, -1, 3]`` (any batch, height, width), output ``float32 [-1, D]``."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, int(feature_dim)))]),
    )


def input_example() -> np.ndarray:
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
    """MLflow's fluent API (``Model.log``, ``load_model``, registration) against ``uri``; afterwards
    the previous URI and ``MLFLOW_TRACKING_URI`` (which ``mlflow.set_tracking_uri`` exports for
    child processes) are restored exactly, so nothing leaks into later runs or subprocesses."""
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


def log_model(uri: str, run_id: str, export_dir) -> str:
    """Log ``export_dir`` as the MLflow Model ``model`` of run ``run_id`` in the store ``uri``;
    returns the logged model's id (``models:/<id>``). The export is verified first."""
    import mlflow
    from mlflow.models import Model

    from recog.inference import ExportedModel

    export_dir = Path(export_dir).resolve()
    exported = ExportedModel(export_dir)  # IntegrityError for a damaged export: never log one
    metadata = {
        "recog_format": "recog-export",
        "feature_dim": exported.feature_dim,
        "image_size": exported.image_size,
        "binarize": exported.binarize or "none",
        "output": "binary codes 0/1 as float32"
        if exported.binarize
        else ("L2-normalised features" if exported.preprocess.get("normalize") else "features"),
    }
    client = mlflow.MlflowClient(uri)
    run = client.get_run(run_id)
    # Created here, in the run's experiment (the fluent API would use the "active" one), then filled.
    logged = client.create_logged_model(
        run.info.experiment_id,
        name=ARTIFACT_PATH,
        source_run_id=run_id,
        tags={"recog.artifact": "export", "recog.export_dir": str(export_dir)},
        params={k: v[:6000] for k, v in run.data.params.items()},
    )
    with tracking_uri(uri), _quiet_mlflow():
        info = Model.log(
            None,
            mlflow.pyfunc,
            name=ARTIFACT_PATH,
            run_id=run_id,
            model_id=logged.model_id,
            loader_module=LOADER_MODULE,
            data_path=str(export_dir),
            signature=signature(exported.feature_dim),
            input_example=input_example(),
            pip_requirements=pip_requirements(),
            metadata=metadata,
        )
    client.finalize_logged_model(logged.model_id, "READY")
    log.info(
        "logged the export %s as MLflow Model %s of run %s (runs:/%s/%s)",
        export_dir,
        info.model_id,
        run_id,
        run_id,
        ARTIFACT_PATH,
    )
    return str(info.model_id)


def logged_model_id(client, run_id: str) -> str | None:
    """The newest MLflow Model named ``model`` logged with run ``run_id``; None if there is none."""
    experiment = client.get_run(run_id).info.experiment_id
    found = [
        model
        for model in client.search_logged_models(experiment_ids=[experiment], filter_string=f"name = '{ARTIFACT_PATH}'")
        if model.source_run_id == run_id
    ]
    if not found:
        return None
    return max(found, key=lambda model: model.creation_timestamp).model_id


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
