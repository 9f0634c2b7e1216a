"""One MLflow run per stage invocation, written by the main process only.

When the tracking store cannot be reached:

* at start (the run cannot be created or reopened): with ``mlflow.required=true`` (default) a
  ``ConfigError`` says so and what to do; with ``mlflow.required=false`` the stage goes on and
  every call of the run is kept locally (below);
* later (a server that went away mid-run): the stage always goes on. The first failure is
  reported once, as a warning; that call and every later one (metrics, params, tags, artifacts,
  the final status) are appended to ``<run dir>/mlflow_pending.jsonl`` without trying the store
  again, and ``python scripts/replay_mlflow.py <run dir>`` sends them afterwards
  (see recog/tracking/local_record.py). Files stay in the run dir as usual.

HTTP stores are tried ``mlflow.request_retries`` extra times with ``mlflow.request_timeout``
seconds per request (MLflow's own defaults, 7 retries and 120 s, stall a run for minutes), unless
``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``MLFLOW_HTTP_REQUEST_TIMEOUT`` are exported.
"""

import logging
import os
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from recog.errors import ConfigError
from recog.tracking import sweep
from recog.tracking.local_record import LocalRecord, record_path
from recog.utils.runtime import is_main_process

log = logging.getLogger(__name__)

_RETRIES_ENV, _TIMEOUT_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"
_EXPORTED = {name for name in (_RETRIES_ENV, _TIMEOUT_ENV) if name in os.environ}


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
    return (f"MLflow tracking store {uri} cannot be reached ({short_error(error)}). Start it or fix "
            "mlflow.tracking_uri; or run without tracking (mlflow.enabled=false); or pass mlflow.required=false "
            "to go on regardless: the run's MLflow calls are then kept in <run dir>/mlflow_pending.jsonl and "
            "`python scripts/replay_mlflow.py <run dir>` sends them once the store is back")


def check_reachable(cfg: DictConfig) -> None:
    """Fail fast, before a stage does any work, when ``mlflow.required`` and the tracking server
    (an http(s) URI) does not answer; ``ConfigError`` says what to do."""
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


def experiment_id(client, cfg: DictConfig, uri: str) -> str:
    """``mlflow.experiment_name``'s id, creating the experiment (artifacts beside an embedded store)."""
    name = cfg.mlflow.experiment_name
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location(cfg, uri))


def artifact_location(cfg: DictConfig, uri: str) -> Optional[str]:
    if uri.startswith("sqlite:"):  # keep artifacts beside the embedded database
        return (Path(cfg.paths.output_root).resolve() / "mlartifacts").as_uri()
    return None


def default_run_name(cfg: DictConfig) -> str:
    """e.g. ``pplcnet/fc/arcmargin/ce+triplet``, from the chosen config classes."""
    def short(node) -> str:
        if node is None:
            return "none"
        return str(node._target_).rsplit(".", 1)[-1].lower().replace("config", "")
    loss = "+".join(cfg.loss.keys())
    return f"{short(cfg.backbone)}/{short(cfg.neck)}/{short(cfg.head)}/{loss}"


def flatten_config(cfg: DictConfig) -> Dict[str, str]:
    """``{"backbone.scale": "2.5", ...}`` from the resolved config."""
    flat: Dict[str, str] = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = str(getattr(node, "value", node))

    walk(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), "")
    return flat


class MlflowTracker:
    """Logs params, metrics and artifacts of one run; does nothing when disabled or not rank 0.

    ``run_id`` continues an existing run (resume) instead of creating one. With
    ``keep_status=True`` the existing run is only added to (e.g. the export stage logging into
    the training run): its status is never changed, and ``finish`` leaves it as it was.
    ``run_dir`` (default: Hydra's run dir, else the working directory) receives the local record
    of calls made while the store is unreachable.

    Inside a sweep (``run.py -m``) a new run is a child of the sweep's parent run (see
    recog/tracking/sweep.py). With ``mlflow.register_best=true`` outside a sweep, a successful
    ``finish`` registers the run's ``export/`` (or ``best_model/``) as a new version of
    ``mlflow.model_name``.
    """

    # Runs created by this process, newest last (a sweep job that fails is matched to its run).
    started_run_ids: List[Optional[str]] = []

    def __init__(self, cfg: DictConfig, stage: str, run_id: Optional[str] = None, keep_status: bool = False,
                 run_dir=None):
        self.run_id: Optional[str] = None
        self.keep_status = bool(keep_status and run_id is not None)
        self.enabled = bool(cfg.mlflow.enabled and is_main_process())
        self.record: Optional[LocalRecord] = None
        self.logged_artifacts: List[str] = []  # artifact paths logged at the top level, e.g. best_model
        if not self.enabled:
            return
        from mlflow.tracking import MlflowClient  # slow import: only where a run is logged

        apply_request_settings(cfg.mlflow)
        self.uri = tracking_uri(cfg)
        self.client = MlflowClient(self.uri)
        self.run_dir = Path(run_dir) if run_dir is not None else _default_run_dir()
        self.model_name = cfg.mlflow.model_name if cfg.mlflow.register_best and not sweep.in_sweep() else None
        if run_id is not None:
            self.run_id = run_id
            if not self.keep_status:
                self._at_start(cfg, lambda: self.client.update_run(run_id, status="RUNNING"), "update_run",
                               status="RUNNING")
            return
        name = " ".join(filter(None, [cfg.mlflow.run_name, sweep.child_run_name()])) or default_run_name(cfg)
        tags = {"recog.stage": stage, "recog.omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""),
                **sweep.child_run_tags()}
        start_time = _now_ms()

        def create():
            run = self.client.create_run(experiment_id(self.client, cfg, self.uri), start_time=start_time, tags=tags,
                                         run_name=name)
            self.run_id = run.info.run_id

        self._at_start(cfg, create, "create_run", experiment_name=cfg.mlflow.experiment_name, run_name=name,
                       tags=tags, start_time=start_time, artifact_location=artifact_location(cfg, self.uri))
        MlflowTracker.started_run_ids.append(self.run_id)
        self.log_params(flatten_config(cfg))

    @staticmethod
    def run_exists(cfg: DictConfig, run_id: Optional[str]) -> bool:
        """Whether the configured tracking store holds the (not deleted) run ``run_id``."""
        if not (run_id and cfg.mlflow.enabled and is_main_process()):
            return False
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        apply_request_settings(cfg.mlflow)
        try:
            run = MlflowClient(tracking_uri(cfg)).get_run(run_id)
        except MlflowException:
            return False
        return run.info.lifecycle_stage != "deleted"

    @property
    def active(self) -> bool:
        """Whether calls are logged: to the store, or to the local record."""
        return self.enabled and (self.run_id is not None or self.record is not None)

    @property
    def offline(self) -> bool:
        return self.record is not None

    def log_params(self, params: Dict[str, str]) -> None:
        if not self.active or not params:
            return
        from mlflow.entities import Param

        params = {k: v[:6000] for k, v in params.items()}
        items = [Param(k, v) for k, v in params.items()]

        def send():
            for start in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=items[start:start + 100])

        self._send(send, "log_batch", params=params)

    def log_metrics(self, metrics: Dict[str, float], step: int) -> None:
        if not self.active or not metrics:
            return
        from mlflow.entities import Metric

        now = _now_ms()
        rows = [[k, float(v), now, int(step)] for k, v in metrics.items()]
        self._send(lambda: self.client.log_batch(self.run_id, metrics=[Metric(*row) for row in rows]), "log_batch",
                   metrics=rows)

    def log_artifact(self, path, artifact_path: Optional[str] = None) -> None:
        if not self.active:
            return
        path = Path(path).resolve()
        if not path.exists():  # a bug of the caller, not a tracking failure to record
            raise FileNotFoundError(f"no such artifact to log: {path}")
        if path.is_dir():
            destination = artifact_path or path.name
            self._send(lambda: self.client.log_artifacts(self.run_id, str(path), destination), "log_artifact",
                       path=str(path), artifact_path=destination)
        else:
            destination = artifact_path
            self._send(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path), "log_artifact",
                       path=str(path), artifact_path=artifact_path)
        if destination:
            self.logged_artifacts.append(destination.split("/")[0])

    def set_tag(self, key: str, value: str) -> None:
        if self.active:
            self._send(lambda: self.client.set_tag(self.run_id, key, value), "set_tag", key=key, value=value)

    def finish(self, status: str = "FINISHED") -> None:
        """``status``: FINISHED, FAILED or KILLED; a no-op for a ``keep_status`` tracker (apart
        from the model registration of ``mlflow.register_best``)."""
        if not self.active:
            return
        if not self.keep_status:
            end_time = _now_ms()
            self._send(lambda: self.client.set_terminated(self.run_id, status=status, end_time=end_time),
                       "set_terminated", status=status, end_time=end_time)
        if status == "FINISHED" and self.model_name:
            self._register()

    def _register(self) -> None:
        from recog.tracking.registry import ARTIFACTS, register_run_artifact

        artifact = next((name for name in ARTIFACTS if name in self.logged_artifacts), None)
        if artifact is None:
            log.warning("mlflow.register_best=true: this run logged neither %s, nothing to register",
                        " nor ".join(ARTIFACTS))
            return
        self._send(lambda: register_run_artifact(self.client, self.run_id, self.model_name, artifact),
                   "register_model", name=self.model_name, artifact=artifact)

    def describe(self) -> str:
        if not self.enabled:
            return "MLflow logging is off"
        if self.offline:
            return (f"MLflow unreachable: {self.record.calls} MLflow call(s) of this run kept in {self.record.path}; "
                    f"send them with `python scripts/replay_mlflow.py {self.run_dir}`")
        hint = " (browse it with `make ui`)" if self.uri.startswith("sqlite:") else ""
        return f"MLflow run {self.run_id} in {self.uri}{hint}"

    def _at_start(self, cfg: DictConfig, action: Callable[[], None], op: str, **fields) -> None:
        """The first call of the run: a store that cannot be reached is an error when required."""
        try:
            action()
        except tracking_errors() as error:
            if cfg.mlflow.required:
                raise ConfigError(unreachable_message(self.uri, error)) from None
            self._go_offline(error)
            self.record.append(op, **fields)

    def _send(self, action: Callable[[], None], op: str, **fields) -> None:
        """``action()`` against the store; once it has failed, ``op`` goes to the local record."""
        if self.record is None:
            try:
                action()
                return
            except tracking_errors() as error:
                self._go_offline(error)
        self.record.append(op, **fields)

    def _go_offline(self, error: Exception) -> None:
        path = record_path(self.run_dir)
        self.record = LocalRecord(path, self.uri, self.run_id, short_error(error))
        log.warning("MLflow (%s) failed: %s. Carrying on without it: this run's MLflow calls are kept in %s; send "
                    "them later with `python scripts/replay_mlflow.py %s`", self.uri, short_error(error), path,
                    self.run_dir)


def _default_run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path.cwd()


def _now_ms() -> int:
    return int(time.time() * 1000)


def _quiet_library_logs() -> None:
    # The embedded store migrates its schema on first use and alembic logs every step at INFO.
    for name in ("alembic", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # urllib3 warns on every retry of an unreachable server; the tracker reports the failure once.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
