"""The MLflow model registry: a run's MLflow Model (``runs:/<run>/model``) as a version of a named model.

A version's source is the logged model itself (``models:/<model id>``), registered with
``mlflow.register_model`` so the logged model records its versions (the UI's "Registered models"), and
``mlflow.pyfunc.load_model("models:/NAME/<version>")`` (or ``models:/NAME@champion``, the alias a
sweep gives its best job's version) loads it like ``runs:/<run>/model``. A run that logged no
MLflow Model (``export.after_train=false`` and no export) has nothing to register.
"""

import contextlib
import logging
import os

log = logging.getLogger(__name__)

CHAMPION = "champion"  # the alias of a sweep's best job's version


def register_run_model(client, run_id: str, model_name: str, alias: str | None = None) -> str | None:
    """Register the MLflow Model logged with run ``run_id`` as a new version of ``model_name``
    (created if needed), optionally under ``alias``; returns the version, None (after a warning)
    when the run logged no MLflow Model."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from recog.tracking.mlflow_model import ARTIFACT_PATH, logged_model_id, tracking_uri

    model_id = logged_model_id(client, run_id)
    if model_id is None:
        log.warning(
            "mlflow.register_best=true: run %s logged no MLflow Model (runs:/%s/%s; export.after_train=false "
            "and no stage=export?): nothing registered",
            run_id,
            run_id,
            ARTIFACT_PATH,
        )
        return None
    try:
        client.get_registered_model(model_name)
    except MlflowException:
        client.create_registered_model(
            model_name,
            description="recog model: images (PNG / JPEG / WebP files, or uint8 [N, H, W, 3]) -> features "
            "float32 [N, D], or gallery matches and a decision for a search model (see the version's run)",
        )
    with tracking_uri(client.tracking_uri), _quiet_registration():  # MLflow resolves models:/ through the fluent store
        # mlflow.register_model (not client.create_model_version) also links the logged model to the
        # version (its mlflow.modelVersions tag): the UI's Models tab shows the registration.
        version = mlflow.register_model(f"models:/{model_id}", model_name, tags={"recog.artifact": ARTIFACT_PATH})
    if alias:
        client.set_registered_model_alias(model_name, alias, version.version)
    log.info(
        "registered the MLflow Model of run %s as %s version %s%s",
        run_id,
        model_name,
        version.version,
        f" (alias {alias})" if alias else "",
    )
    return str(version.version)


@contextlib.contextmanager
def _quiet_registration():
    # mlflow.register_model prints "Successfully registered..." / "Created version..." to stderr.
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        yield
