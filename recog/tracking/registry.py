"""The MLflow model registry: a run's MLflow Model (``runs:/<run>/model``) as a version of a named model.

A version's source is the logged model itself (``models:/<model id>``), so
``mlflow.pyfunc.load_model("models:/NAME/<version>")`` (or ``models:/NAME@champion``, the alias a
sweep gives its best job's version) loads it like ``runs:/<run>/model``. A run that logged no
MLflow Model (``export.after_train=false`` and no export) has nothing to register.
"""

import logging

log = logging.getLogger(__name__)

CHAMPION = "champion"  # the alias of a sweep's best job's version


def register_run_model(client, run_id: str, model_name: str, alias: str | None = None) -> str | None:
    """Register the MLflow Model logged with run ``run_id`` as a new version of ``model_name``
    (created if needed), optionally under ``alias``; returns the version, None (after a warning)
    when the run logged no MLflow Model."""
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
            description="recog feature extractor: images uint8 [N, H, W, 3] "
            "-> features float32 [N, D] (see the version's run)",
        )
    with tracking_uri(client.tracking_uri):  # MLflow resolves the models:/ source through the fluent store
        version = client.create_model_version(
            model_name,
            source=f"models:/{model_id}",
            run_id=run_id,
            model_id=model_id,
            tags={"recog.artifact": ARTIFACT_PATH},
        )
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
