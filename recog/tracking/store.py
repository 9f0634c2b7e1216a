"""The MLflow tracking store: where it is, how requests to it behave, and which errors mean it failed.

Shared by the tracker (one run per stage), the sweep's parent run and the scripts: nothing here
knows about stages or sweeps.

HTTP stores are tried ``mlflow.request_retries`` extra times with ``mlflow.request_timeout``
seconds per request (MLflow's own defaults, 7 retries and 120 s, stall a run for minutes), unless
``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``MLFLOW_HTTP_REQUEST_TIMEOUT`` are exported.

Experiments are created with the tag ``mlflow.experimentKind=custom_model_development`` (the kind
MLflow 3 records for model training; an existing experiment without it gets it) and recog's view of
the runs table (``recog.tracking.ui``: the tag that ``make ui``'s URL loads, sorted by and showing
the monitored metric).
"""

import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from recog.errors import ConfigError
from recog.utils.runtime import is_main_process

log = logging.getLogger(__name__)

_RETRIES_ENV, _TIMEOUT_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"
_EXPORTED = {name for name in (_RETRIES_ENV, _TIMEOUT_ENV) if name in os.environ}
# The kind of experiment, as MLflow 3 records it (the UI's landing view is chosen by the URL: recog.tracking.ui).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


def tracking_uri(cfg: DictConfig) -> str:
    """``mlflow.tracking_uri``, or the embedded SQLite store ``<paths.output_root>/mlflow.db``."""
    if cfg.mlflow.tracking_uri:
        return str(cfg.mlflow.tracking_uri)
    root = Path(cfg.paths.output_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def apply_request_settings(mlflow_cfg) -> None:
    """HTTP retries and timeout from the config, unless the user exported MLflow's variables."""
    _quiet_library_logs()
    for name, value in ((_RETRIES_ENV, mlflow_cfg.request_retries), (_TIMEOUT_ENV, mlflow_cfg.request_timeout)):
        if name not in _EXPORTED:
            os.environ[name] = str(int(value))


def tracking_errors() -> tuple:
    """Exceptions that mean "the tracking store failed", as opposed to a bug in recog."""
    import requests
    from mlflow.exceptions import MlflowException

    return MlflowException, requests.RequestException, OSError


def unreachable_message(uri: str, error: Exception) -> str:
    return (
        f"MLflow tracking store {uri} cannot be reached ({short_error(error)}). Start it or fix "
        "mlflow.tracking_uri; or run without tracking (mlflow.enabled=false); or pass mlflow.required=false "
        "to go on regardless: the run's MLflow calls are then kept in <run dir>/mlflow_pending.jsonl and "
        "`python scripts/replay_mlflow.py <run dir>` sends them once the store is back"
    )


def check_local_store(cfg: DictConfig) -> None:
    """``ConfigError`` when ``mlflow.tracking_uri`` is a SQLite file that cannot be written (a
    read-only folder, a file in the way): MLflow would retry for about two minutes, then fail.
    A local file will not come back like a server, so ``mlflow.required=false`` does not skip this."""
    uri = cfg.mlflow.tracking_uri
    if not cfg.mlflow.enabled or not uri or not str(uri).startswith("sqlite:///"):
        return
    from recog.utils.paths import check_writable

    database = Path(str(uri)[len("sqlite:///") :].split("?", 1)[0])
    if not str(database) or str(database) == ":memory:":
        return
    if database.is_dir():
        raise ConfigError(
            f"mlflow.tracking_uri={uri} is a folder, not a SQLite file: name a file, e.g. sqlite:///{database}/mlflow.db"
        )
    hint = "name a SQLite file in a writable folder, or leave mlflow.tracking_uri unset (<paths.output_root>/mlflow.db)"
    check_writable(str(database.parent), "mlflow.tracking_uri's folder", hint)
    if database.exists() and not os.access(database, os.R_OK | os.W_OK):
        raise ConfigError(f"mlflow.tracking_uri={uri}: {database} cannot be written (read-only); {hint}")


def check_reachable(cfg: DictConfig) -> None:
    """Fail fast, before a stage does any work, when ``mlflow.required`` and the tracking server
    (an http(s) URI) does not answer, or (required or not) when a SQLite store cannot be written
    (``check_local_store``); ``ConfigError`` says what to do."""
    if is_main_process():
        check_local_store(cfg)
    if not (cfg.mlflow.enabled and cfg.mlflow.required and is_main_process()):
        return
    uri = tracking_uri(cfg)
    if not uri.startswith(("http://", "https://")):
        return
    from mlflow.tracking import MlflowClient

    apply_request_settings(cfg.mlflow)
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except tracking_errors() as error:
        raise ConfigError(unreachable_message(uri, error)) from None


def short_error(error: Exception) -> str:
    """The gist of an MLflow / requests error: its first line, at most 300 characters."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def experiment_id(client, cfg: DictConfig, uri: str, update_view: bool = False) -> str:
    """``mlflow.experiment_name``'s id, creating the experiment (artifacts beside an embedded store)
    with its kind (``EXPERIMENT_KIND_TAG``) and recog's runs view for ``trainer.monitor``. An existing
    experiment gets what it lacks; ``update_view`` (a training run) also sets the view to this run's
    monitor."""
    from recog.tracking.ui import VIEW_TAG, view_tag_value

    name = cfg.mlflow.experiment_name
    view = view_tag_value(str(OmegaConf.select(cfg, "trainer.monitor", default="recall_at_1")))
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        tags = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, VIEW_TAG: view}
        return client.create_experiment(name, artifact_location=artifact_location(cfg, uri), tags=tags)
    if EXPERIMENT_KIND_TAG not in experiment.tags:  # made before recog tagged it, or by someone else
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    if VIEW_TAG not in experiment.tags or (update_view and experiment.tags[VIEW_TAG] != view):
        client.set_experiment_tag(experiment.experiment_id, VIEW_TAG, view)
    return experiment.experiment_id


def artifact_location(cfg: DictConfig, uri: str) -> str | None:
    if uri.startswith("sqlite:"):  # keep artifacts beside the embedded database
        return (Path(cfg.paths.output_root).resolve() / "mlartifacts").as_uri()
    return None


def _quiet_library_logs() -> None:
    # The embedded store migrates its schema on first use and alembic logs every step at INFO.
    for name in ("alembic", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # urllib3 warns on every retry of an unreachable server; the tracker reports the failure once.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
