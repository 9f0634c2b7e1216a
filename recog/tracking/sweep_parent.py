"""The sweeping process of ``run.py -m``: the MLflow parent run of a sweep.

``MlflowSweepCallback`` (configured under ``hydra.callbacks`` in conf/config.yaml as
``recog.tracking.sweep.MlflowSweepCallback``, which re-exports it):

* ``on_multirun_start`` (before any job): creates the parent run, named ``mlflow.run_name`` or
  ``sweep <sweep dir name>`` and tagged with the sweep's command-line overrides
  (``recog.sweep_overrides``), the swept keys and, for the Optuna sweeper, the search space; its
  id and the swept keys go to the jobs through environment variables (recog/tracking/sweep_job.py).
  With the joblib launcher it also divides the CPU cores among the parallel jobs
  (``recog.utils.runtime.divide_threads_among_jobs``).
* ``on_multirun_end``, or when Hydra stops with a failed job (at exit, or as ``recog.app.main``
  returns: ``finish_stopped_sweeps``): tags the parent with the
  job counts and the best child (by ``sweep.objective``, higher is better), logs the best
  child's swept values as ``best.<key>`` params (the Optuna sweeper's ``best_params``
  when it wrote ``optimization_results.yaml``), writes ``comparison.png`` / ``comparison.txt``
  into the sweep dir and logs them, registers the best child's MLflow Model with the alias
  ``champion`` when ``mlflow.register_best=true``, and finishes the parent (FAILED when Hydra
  stopped on a failure; deleted when no job ran at all, e.g. Hydra refused a combination).
"""

import atexit
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from recog.errors import ConfigError, RecogError
from recog.tracking.store import (
    apply_request_settings,
    experiment_id,
    short_error,
    tracking_errors,
    tracking_uri,
    unreachable_message,
)
from recog.tracking.sweep_job import KEYS_ENV, PARENT_ENV, check_objective
from recog.utils import atomic
from recog.utils.runtime import divide_threads_among_jobs

log = logging.getLogger(__name__)
_open: list["MlflowSweepCallback"] = []  # sweeps whose parent run is not finished yet


def finish_stopped_sweeps() -> None:
    """Finishes the parent run of each sweep Hydra stopped (a failed job, a refused combination),
    as the process's exit does: for a sweep run in a process that goes on (``recog.app.main``)."""
    while _open:
        callback = _open.pop()
        atexit.unregister(callback._finish_at_exit)
        callback._finish(stopped=True)


class MlflowSweepCallback(Callback):
    """Creates and finishes the sweep's parent run (see the module docstring)."""

    def __init__(self) -> None:
        self.parent: SweepParent | None = None
        self.config: DictConfig | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        divide_threads_among_jobs(config)
        if not config.mlflow.enabled:
            return
        try:
            check_objective(config)
            self.parent = SweepParent.start(config)
        except RecogError as error:  # before any job: one paragraph, exit 2, as run.py does
            print(f"recog: {error}", file=sys.stderr, flush=True)
            sys.exit(2)
        if self.parent is None:
            return
        self.config = config
        os.environ[PARENT_ENV] = self.parent.run_id
        os.environ[KEYS_ENV] = json.dumps(swept_keys(config))
        atexit.register(self._finish_at_exit)
        _open.append(self)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._finish(stopped=False)

    def _finish_at_exit(self) -> None:
        self._finish(stopped=True)  # Hydra raised (a failed job) or the sweep was interrupted

    def _finish(self, stopped: bool) -> None:
        if self in _open:
            _open.remove(self)
        parent, self.parent = self.parent, None
        for name in (PARENT_ENV, KEYS_ENV):
            os.environ.pop(name, None)
        if parent is not None:
            parent.finish(self.config, stopped=stopped)


def swept_keys(config: DictConfig) -> list[str]:
    """Keys the sweep varies: command-line sweeps (``a=1,2``, ``range()``, ``interval()``) and
    the sweeper's ``params`` (the Optuna search space, or the basic sweeper's)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    keys = [o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()]
    params = config.hydra.sweeper.get("params") or {}
    return list(dict.fromkeys(keys + [str(k) for k in params]))


class SweepParent:
    """The parent run of a sweep, in the store of ``mlflow.tracking_uri``."""

    def __init__(self, client, run_id: str, experiment_id: str):
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id

    @classmethod
    def start(cls, config: DictConfig) -> Optional["SweepParent"]:
        """None (after a warning) when the store is unreachable and ``mlflow.required=false``."""
        from mlflow.tracking import MlflowClient

        apply_request_settings(config.mlflow)
        uri = tracking_uri(config)
        client = MlflowClient(uri)
        sweep_dir = Path(str(config.hydra.sweep.dir))
        tags = {
            "recog.stage": "sweep",
            "recog.sweep_dir": str(sweep_dir.resolve()),
            "recog.sweep_overrides": " ".join(config.hydra.overrides.task),
            "recog.swept_keys": " ".join(swept_keys(config)),
            "recog.objective": str(config.sweep.objective),
            "recog.sweeper": str(config.hydra.sweeper.get("_target_", "")).rsplit(".", 1)[-1],
            "recog.launcher": str(config.hydra.launcher.get("_target_", "")).rsplit(".", 1)[-1],
        }
        params = config.hydra.sweeper.get("params")
        if params:
            tags["recog.search_space"] = json.dumps({str(k): str(v) for k, v in params.items()})
        try:
            experiment = experiment_id(client, config, uri, update_view=True)
            run = client.create_run(experiment, tags=tags, run_name=config.mlflow.run_name or f"sweep {sweep_dir.name}")
        except tracking_errors() as error:
            if config.mlflow.required:
                raise ConfigError(unreachable_message(uri, error)) from None
            log.warning(
                "MLflow (%s) failed: %s; the sweep goes on without a parent run (each job keeps its "
                "MLflow calls in its own dir)",
                uri,
                short_error(error),
            )
            return None
        log.info("MLflow parent run %s (%s) for the sweep in %s", run.info.run_id, run.info.run_name, sweep_dir)
        return cls(client, run.info.run_id, experiment)

    def finish(self, config: DictConfig, stopped: bool) -> None:
        """Summarise the children into the parent and end it; never raises (a sweep's results
        are already in its child runs)."""
        try:
            summary = self._summarize(config)
            if stopped and not summary["jobs"]:  # e.g. Hydra refused a combination before any job
                self.client.delete_run(self.run_id)
                log.info("no job of the sweep ran: its MLflow parent run %s is deleted", self.run_id)
                return
            status = "FAILED" if stopped or (summary["jobs"] and not summary["finished"]) else "FINISHED"
            self.client.set_terminated(self.run_id, status=status)
            log.info(
                "sweep %s: %d job(s), %d finished, best %s; parent run %s is %s",
                Path(str(config.hydra.sweep.dir)),
                summary["jobs"],
                summary["finished"],
                summary["best"] or "-",
                self.run_id,
                status,
            )
        except Exception as error:  # noqa: BLE001 - reported, and the jobs' own runs are complete
            log.warning(
                "could not summarise the sweep into MLflow parent run %s: %s",
                self.run_id,
                short_error(error),
                exc_info=not isinstance(error, (*tracking_errors(), RecogError)),
            )

    def _summarize(self, config: DictConfig) -> dict[str, Any]:
        from recog.tracking.compare import format_table, load_runs, plot_comparison, sort_by_metric

        objective = str(config.sweep.objective)
        children = load_runs(self.client, [self.experiment_id], parent_run_id=self.run_id, stage=None)
        finished = [run for run in children if run.status == "FINISHED" and objective in run.metrics]
        client, parent = self.client, self.run_id
        client.set_tag(parent, "recog.jobs", str(len(children)))
        client.set_tag(parent, "recog.failed_jobs", str(sum(run.status == "FAILED" for run in children)))
        best = sort_by_metric(finished, objective)[0] if finished else None
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if best is not None:
            client.set_tag(parent, "recog.best_run_id", best.run_id)
            client.set_tag(parent, "recog.best_overrides", best.tags.get("recog.overrides", ""))
            metrics = {f"best_{objective}": best.metrics[objective]}
            metrics.update(
                {f"best_{k}": v for k, v in best.metrics.items() if k.startswith("recall_at_") or k == "mAP"}
            )
            for key, value in metrics.items():
                client.log_metric(parent, key, float(value))
            client.log_batch(parent, params=_params(self._best_params(best, sweep_dir)))
        if children:
            title = f"{sweep_dir.name}: {len(finished)} of {len(children)} jobs finished"
            table = format_table(children, objective)
            sweep_dir.mkdir(parents=True, exist_ok=True)
            atomic.write_text(sweep_dir / "comparison.txt", table + "\n", "sweep comparison")
            plot_comparison(children, objective, sweep_dir / "comparison.png", title=title)
            client.log_artifact(parent, str(sweep_dir / "comparison.png"), "comparison")
            client.log_artifact(parent, str(sweep_dir / "comparison.txt"), "comparison")
            log.info("sweep results by %s:\n%s", objective, table)
        if (sweep_dir / "optimization_results.yaml").is_file():
            client.log_artifact(parent, str(sweep_dir / "optimization_results.yaml"))
        if best is not None and config.mlflow.register_best:
            self._register(best.run_id, str(config.mlflow.model_name))
        return {"jobs": len(children), "finished": len(finished), "best": best.name if best else None}

    @staticmethod
    def _best_params(best, sweep_dir: Path) -> dict[str, str]:
        """``best.<key>``: the Optuna sweeper's best_params, else the best child's swept values."""
        results = sweep_dir / "optimization_results.yaml"
        if results.is_file():
            from omegaconf import OmegaConf

            found = OmegaConf.load(results)
            if "best_params" in found:
                return {f"best.{k}": str(v) for k, v in found.best_params.items()}
        pairs = [item.split("=", 1) for item in best.tags.get("recog.overrides", "").split() if "=" in item]
        return {f"best.{k.lstrip('+~')}": v for k, v in pairs}

    def _register(self, run_id: str, model_name: str) -> None:
        from recog.tracking.registry import CHAMPION, register_run_model

        version = register_run_model(self.client, run_id, model_name, alias=CHAMPION)
        if version is not None:
            self.client.set_tag(self.run_id, "recog.registered_model", f"{model_name}/{version} (@{CHAMPION})")


def _params(values: dict[str, str]):
    from mlflow.entities import Param

    return [Param(k, v[:6000]) for k, v in values.items()]
