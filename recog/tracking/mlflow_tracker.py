"""One MLflow run per stage invocation, written by the main process only.

(Over 300 lines: every MLflow call of a run goes through the one offline-fallback path here.)

A run is named by its stage and what differs (``train pplcnet x1.0 arcmargin 14:03``; ``eval <the
training run's name>``), logs its dataset as an MLflow dataset input (recog/tracking/datasets.py)
and, once the run has an export, the export as its MLflow Model ``model``
(recog/tracking/mlflow_model.py). Eval, export and predict runs link to the training run whose
model they used: tag ``recog.train_run_id`` and a link in the run's description. A training run's
headline is its monitored metric (``trainer.monitor``): logged first, and at the end again with the
best model's value (``log_best``), which is the value MLflow shows.

When the tracking store cannot be reached:

* at start (the run cannot be created or reopened): with ``mlflow.required=true`` (default) a
  ``ConfigError`` says so and what to do; with ``mlflow.required=false`` the stage goes on and
  every call of the run is kept locally (below);
* later (a server that went away mid-run): the stage always goes on. The first failure is
  reported once, as a warning; that call and every later one (metrics, params, tags, artifacts,
  the final status) are appended to ``<run dir>/mlflow_pending.jsonl`` without trying the store
  again, and ``python scripts/replay_mlflow.py <run dir>`` sends them afterwards
  (see recog/tracking/local_record.py). Files stay in the run dir as usual.

Store settings (URI, request retries and timeout, the experiment) live in recog/tracking/store.py.
"""

import contextlib
import contextvars
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from recog.errors import ConfigError, RecogError, TrainingInterrupted
from recog.tracking import sweep_job
from recog.tracking.local_record import LocalRecord, record_path
from recog.tracking.naming import default_run_name, training_run_id, training_run_link
from recog.tracking.store import (
    apply_request_settings,
    artifact_location,
    check_reachable,
    experiment_id,
    short_error,
    tracking_errors,
    tracking_uri,
    unreachable_message,
)
from recog.utils.interrupt import StopRequest
from recog.utils.runtime import is_main_process

log = logging.getLogger(__name__)

__all__ = [
    "MlflowTracker",
    "check_reachable",
    "collect_runs",
    "default_run_name",
    "flatten_config",
    "record_failed_job",
    "tracking_uri",
]

# The runs created while ``collect_runs`` is active (None outside): how ``run_stage`` finds the run
# of a sweep job that failed. Scoped to the ``with`` block (and its thread / context), not a global list.
_STARTED: contextvars.ContextVar = contextvars.ContextVar("recog_started_runs", default=None)


@contextlib.contextmanager
def collect_runs() -> Iterator[list[str | None]]:
    """``with collect_runs() as started:``: ``started`` receives the id of every run a tracker creates
    inside the block (None for a run kept only in the local record), in order."""
    started: list[str | None] = []
    token = _STARTED.set(started)
    try:
        yield started
    finally:
        _STARTED.reset(token)


def flatten_config(cfg: DictConfig) -> dict[str, str]:
    """``{"backbone.scale": "2.5", ...}`` from the resolved config."""
    flat: dict[str, str] = {}

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
    recog/tracking/sweep_job.py). With ``mlflow.register_best=true`` outside a sweep, a successful
    ``finish`` registers the run's MLflow Model (``log_model``) as a new version of
    ``mlflow.model_name``.

    ``train_run_id``: the training run whose model this run uses; for eval and predict runs it is
    found by default in ``model_path``'s ``state.json`` / ``predict.model_dir``'s export report.
    """

    def __init__(
        self,
        cfg: DictConfig,
        stage: str,
        run_id: str | None = None,
        keep_status: bool = False,
        run_dir=None,
        train_run_id: str | None = None,
    ):
        self.run_id: str | None = None
        self.keep_status = bool(keep_status and run_id is not None)
        self.enabled = bool(cfg.mlflow.enabled and is_main_process())
        self.record: LocalRecord | None = None
        self.logged_artifacts: list[str] = []  # artifact paths logged at the top level, e.g. best_model
        self.logged_model = False  # whether log_model logged the run's MLflow Model
        self.stage = stage
        self.monitor = str(OmegaConf.select(cfg, "trainer.monitor", default="recall_at_1"))
        self.log_model_files = bool(OmegaConf.select(cfg, "mlflow.log_model_files", default=True))
        if not self.enabled:
            return
        from mlflow.tracking import MlflowClient  # slow import: only where a run is logged

        apply_request_settings(cfg.mlflow)
        self.uri = tracking_uri(cfg)
        self.client = MlflowClient(self.uri)
        self.run_dir = Path(run_dir) if run_dir is not None else _default_run_dir()
        self.model_name = cfg.mlflow.model_name if cfg.mlflow.register_best and not sweep_job.in_sweep() else None
        if run_id is not None:
            self.run_id = run_id
            if not self.keep_status:
                self._at_start(
                    cfg, lambda: self.client.update_run(run_id, status="RUNNING"), "update_run", status="RUNNING"
                )
            return
        if train_run_id is None and stage in ("eval", "predict"):
            train_run_id = training_run_id(cfg, stage)
        train_run = self._find_run(train_run_id)
        name = " ".join(filter(None, [cfg.mlflow.run_name, sweep_job.child_run_name()])) or default_run_name(
            cfg, stage, train_run.info.run_name if train_run else None
        )
        tags = {
            "recog.stage": stage,
            "recog.omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""),
            **sweep_job.child_run_tags(),
        }
        if train_run is not None:
            tags.update(training_run_link(train_run, stage))
        start_time = _now_ms()

        def create():
            experiment = experiment_id(self.client, cfg, self.uri, update_view=stage == "train")
            run = self.client.create_run(experiment, start_time=start_time, tags=tags, run_name=name)
            self.run_id = run.info.run_id

        self._at_start(
            cfg,
            create,
            "create_run",
            experiment_name=cfg.mlflow.experiment_name,
            run_name=name,
            tags=tags,
            start_time=start_time,
            artifact_location=artifact_location(cfg, self.uri),
            monitor=self.monitor,
        )
        started = _STARTED.get()
        if started is not None:
            started.append(self.run_id)
        self.log_params(flatten_config(cfg))
        self._log_dataset(cfg, stage)
        if stage == "train":  # no value yet; makes it the run's first metric (see log_metrics)
            self.log_metrics({self.monitor: math.nan}, step=0)

    def _find_run(self, run_id: str | None):
        """The run ``run_id`` in this store, or None (not given, deleted, or not there)."""
        if not run_id:
            return None
        try:
            run = self.client.get_run(run_id)
        except tracking_errors():
            return None
        return run if run.info.lifecycle_stage != "deleted" else None

    def _log_dataset(self, cfg: DictConfig, stage: str) -> None:
        from recog.tracking.datasets import dataset_input, dataset_record

        try:
            record = dataset_record(cfg, stage)
        except (OSError, ValueError, RecogError) as error:  # never stop a stage for its dataset's digest
            log.warning("could not describe the dataset for MLflow: %s", error)
            return
        if record is not None:
            self._send(
                lambda: self.client.log_inputs(self.run_id, datasets=[dataset_input(record)]),
                "log_inputs",
                dataset=record,
            )

    def log_model(self, export_dir) -> None:
        """Log ``export_dir`` (a verified recog export) as this run's MLflow Model ``model``
        (``runs:/<run id>/model``, shown in the UI's Models column)."""
        if not self.active:
            return
        from recog.tracking.mlflow_model import log_model

        export_dir = Path(export_dir).resolve()
        self._send(lambda: log_model(self.uri, self.run_id, export_dir), "log_model", path=str(export_dir))
        self.logged_model = True

    @staticmethod
    def run_exists(cfg: DictConfig, run_id: str | None) -> bool:
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

    def log_params(self, params: dict[str, str]) -> None:
        if not self.active or not params:
            return
        from mlflow.entities import Param

        params = {k: v[:6000] for k, v in params.items()}
        items = [Param(k, v) for k, v in params.items()]

        def send():
            for start in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=items[start : start + 100])

        self._send(send, "log_batch", params=params)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """``metrics`` at ``step``, the monitored metric first: MLflow lists a run's metrics in the order
        they were first logged, and its compare view plots the first metric the runs share."""
        if not self.active or not metrics:
            return
        from mlflow.entities import Metric

        now = _now_ms()
        rows = [[k, float(v), now, int(step)] for k, v in sorted(metrics.items(), key=lambda kv: kv[0] != self.monitor)]
        self._send(
            lambda: self.client.log_batch(self.run_id, metrics=[Metric(*row) for row in rows]),
            "log_batch",
            metrics=rows,
        )

    def log_best(self, best: dict[str, float], step: int) -> None:
        """The best model's eval metrics (``best``: a ``state["best"]`` with its ``epoch``) as the run's
        headline: under their own names one step after ``step`` (the last one trained), so that the
        value MLflow shows for ``recall_at_1`` (its latest) is the best model's, and the earlier points
        stay the per-epoch history; plus ``best_epoch``. (MLflow's Keras autologging does the same for
        the weights ``EarlyStopping`` restores.)"""
        headline = {k: v for k, v in best.items() if k != "epoch"}
        headline["best_epoch"] = best["epoch"]
        self.log_metrics(headline, step=step + 1)

    def log_artifact(self, path, artifact_path: str | None = None) -> None:
        """A file, or a folder (``best_model/``, ``export/``: skipped with ``mlflow.log_model_files=false``)."""
        if not self.active:
            return
        path = Path(path).resolve()
        if not path.exists():  # a bug of the caller, not a tracking failure to record
            raise FileNotFoundError(f"no such artifact to log: {path}")
        if path.is_dir() and not self.log_model_files:  # best_model/, export/: kept in the run dir
            return
        if path.is_dir():
            destination = artifact_path or path.name
            self._send(
                lambda: self.client.log_artifacts(self.run_id, str(path), destination),
                "log_artifact",
                path=str(path),
                artifact_path=destination,
            )
        else:
            destination = artifact_path
            self._send(
                lambda: self.client.log_artifact(self.run_id, str(path), artifact_path),
                "log_artifact",
                path=str(path),
                artifact_path=artifact_path,
            )
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
            self._send(
                lambda: self.client.set_terminated(self.run_id, status=status, end_time=end_time),
                "set_terminated",
                status=status,
                end_time=end_time,
            )
        if status == "FINISHED" and self.model_name:
            self._register()

    def _register(self) -> None:
        from recog.tracking.registry import register_run_model

        if not self.logged_model:
            log.warning(
                "mlflow.register_best=true: this run logged no MLflow Model (export.after_train=false?), "
                "nothing to register; export it (stage=export) to register it"
            )
            return
        self._send(
            lambda: register_run_model(self.client, self.run_id, self.model_name),
            "register_model",
            name=self.model_name,
            alias=None,
        )

    @contextlib.contextmanager
    def run_status(self) -> Iterator["MlflowTracker"]:
        """``with tracker.run_status():`` around a stage's work: when the block ends the run is marked
        FINISHED (and ``describe()`` logged); KILLED on a stop (``TrainingInterrupted``, or
        ``KeyboardInterrupt`` from a second Ctrl-C), FINISHED if the stop came after the work was
        complete (``TrainingInterrupted.complete``); FAILED on any other exception, which propagates."""
        try:
            yield self
        except (KeyboardInterrupt, TrainingInterrupted) as error:
            # The launcher repeats SIGTERM while a rank lives (3 times, 0.2 s apart): without a
            # StopRequest the default handler would end the process before the status is written.
            with StopRequest():
                self.finish("FINISHED" if getattr(error, "complete", False) else "KILLED")
            raise
        except BaseException:
            self.finish("FAILED")
            raise
        self.finish()
        log.info("%s", self.describe())

    def describe(self) -> str:
        if not self.enabled:
            return "MLflow logging is off"
        if self.offline:
            return (
                f"MLflow unreachable: {self.record.calls} MLflow call(s) of this run kept in {self.record.path}; "
                f"send them with `python scripts/replay_mlflow.py {self.run_dir}`"
            )
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
        log.warning(
            "MLflow (%s) failed: %s. Carrying on without it: this run's MLflow calls are kept in %s; send "
            "them later with `python scripts/replay_mlflow.py %s`",
            self.uri,
            short_error(error),
            path,
            self.run_dir,
        )


def _default_run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path.cwd()


def _now_ms() -> int:
    return int(time.time() * 1000)


def record_failed_job(cfg: DictConfig, error: Exception, started_run_ids: list[str | None], run_dir) -> None:
    """A sweep job that raised ``error``: its run gets the tag ``recog.error``; a job that failed
    before its stage created a run gets a FAILED run of its own, so that every job of the sweep
    is in MLflow. Never raises (the job's own error is the one to report)."""
    if not cfg.mlflow.enabled:
        return
    message = short_error(error)
    try:
        run_id = started_run_ids[-1] if started_run_ids else None
        if run_id is not None:
            from mlflow.tracking import MlflowClient

            MlflowClient(tracking_uri(cfg)).set_tag(run_id, "recog.error", message)
            return
        if started_run_ids:
            return  # the run only exists in the local record
        tracker = MlflowTracker(cfg, stage=str(getattr(cfg.stage, "value", cfg.stage)), run_dir=run_dir)
        tracker.set_tag("recog.error", message)
        tracker.finish("FAILED")
    except Exception as failure:  # noqa: BLE001
        log.warning("could not record the failed job in MLflow: %s", short_error(failure))
