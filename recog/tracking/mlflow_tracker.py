"""One MLflow run per stage invocation, written by the main process only."""

import logging
import time
from pathlib import Path
from typing import Dict, Optional

from omegaconf import DictConfig, OmegaConf

from recog.utils.runtime import is_main_process

log = logging.getLogger(__name__)


def tracking_uri(cfg: DictConfig) -> str:
    """``mlflow.tracking_uri``, or the embedded SQLite store ``<paths.output_root>/mlflow.db``."""
    if cfg.mlflow.tracking_uri:
        return str(cfg.mlflow.tracking_uri)
    root = Path(cfg.paths.output_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


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
    """

    def __init__(self, cfg: DictConfig, stage: str, run_id: Optional[str] = None, keep_status: bool = False):
        self.run_id: Optional[str] = None
        self.keep_status = bool(keep_status and run_id is not None)
        if not (cfg.mlflow.enabled and is_main_process()):
            return
        from mlflow.tracking import MlflowClient  # slow import: only where a run is logged

        _quiet_database_logs()
        self.uri = tracking_uri(cfg)
        self.client = MlflowClient(self.uri)
        if run_id is not None:
            self.run_id = run_id
            if not self.keep_status:
                self.client.update_run(run_id, status="RUNNING")
            return
        experiment_id = self._experiment_id(cfg)
        name = cfg.mlflow.run_name or default_run_name(cfg)
        run = self.client.create_run(experiment_id, run_name=name, tags={"recog.stage": stage})
        self.run_id = run.info.run_id
        self.log_params(flatten_config(cfg))

    @staticmethod
    def run_exists(cfg: DictConfig, run_id: Optional[str]) -> bool:
        """Whether the configured tracking store holds the (not deleted) run ``run_id``."""
        if not (run_id and cfg.mlflow.enabled and is_main_process()):
            return False
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        _quiet_database_logs()
        try:
            run = MlflowClient(tracking_uri(cfg)).get_run(run_id)
        except MlflowException:
            return False
        return run.info.lifecycle_stage != "deleted"

    @property
    def active(self) -> bool:
        return self.run_id is not None

    def _experiment_id(self, cfg: DictConfig) -> str:
        name = cfg.mlflow.experiment_name
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        artifacts = None
        if self.uri.startswith("sqlite:"):  # keep artifacts beside the embedded database
            artifacts = (Path(cfg.paths.output_root).resolve() / "mlartifacts").as_uri()
        return self.client.create_experiment(name, artifact_location=artifacts)

    def log_params(self, params: Dict[str, str]) -> None:
        if not self.active:
            return
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    def log_metrics(self, metrics: Dict[str, float], step: int) -> None:
        if not self.active or not metrics:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, int(step)) for k, v in metrics.items()])

    def log_artifact(self, path, artifact_path: Optional[str] = None) -> None:
        if not self.active:
            return
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path or path.name)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tag(self, key: str, value: str) -> None:
        if self.active:
            self.client.set_tag(self.run_id, key, value)

    def finish(self, status: str = "FINISHED") -> None:
        """``status``: FINISHED, FAILED or KILLED; a no-op for a ``keep_status`` tracker."""
        if self.active and not self.keep_status:
            self.client.set_terminated(self.run_id, status=status)

    def describe(self) -> str:
        if not self.active:
            return "MLflow logging is off"
        hint = " (browse it with `make ui`)" if self.uri.startswith("sqlite:") else ""
        return f"MLflow run {self.run_id} in {self.uri}{hint}"


def _quiet_database_logs() -> None:
    # The embedded store migrates its schema on first use and alembic logs every step at INFO.
    for name in ("alembic", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)
