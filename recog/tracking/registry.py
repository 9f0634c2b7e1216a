"""The MLflow model registry: a run's ``export/`` (or ``best_model/``) as a version of a named model.

A deployment then fetches "the latest version of NAME" (``models:/NAME/latest``, or
``MlflowClient().get_registered_model(NAME).latest_versions``) and downloads its files.
"""

import logging
from typing import Optional

log = logging.getLogger(__name__)

# What a version points at, in order of preference: the inference model, else the weights.
ARTIFACTS = ("export", "best_model")


def registrable_artifact(client, run_id: str) -> Optional[str]:
    """``"export"`` or ``"best_model"``: the first of them the run has logged; None if neither."""
    logged = {info.path for info in client.list_artifacts(run_id)}
    return next((name for name in ARTIFACTS if name in logged), None)


def register_run_artifact(client, run_id: str, model_name: str, artifact: str) -> str:
    """Register ``<run artifacts>/<artifact>`` as a new version of ``model_name`` (created if
    needed); returns the version number."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(model_name)
    except MlflowException:
        client.create_registered_model(model_name, description="recog feature extractor (see the version's run)")
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact}"
    version = client.create_model_version(model_name, source=source, run_id=run_id,
                                          tags={"recog.artifact": artifact})
    log.info("registered %s of run %s as model %s version %s", artifact, run_id, model_name, version.version)
    return str(version.version)
