"""Inside a sweep job (``run.py -m``): who the job is, and what it returns to the sweeper.

The sweeping process (recog/tracking/sweep_parent.py) passes the parent run's id and the swept
keys through environment variables, so that jobs in other processes (``hydra/launcher=joblib``,
submitit) see them too. Each job's tracker (recog/tracking/mlflow_tracker.py) creates its run as a
child of the parent (tag ``mlflow.parentRunId``), named and tagged (``recog.overrides``) with the
job's values of the swept keys: what makes it different.
"""

import json
import os
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig

from recog.errors import ConfigError
from recog.metrics.ranks import metric_names

PARENT_ENV = "RECOG_SWEEP_PARENT_RUN_ID"
KEYS_ENV = "RECOG_SWEEP_KEYS"
JOB_NUM_ENV = "RECOG_SWEEP_JOB_NUM"  # for processes a job starts itself (e.g. a submitit node's ranks)


class SweepJobFailed(CompactHydraException):
    """A sweep job's ``RecogError``, re-raised for Hydra: the job counts as failed, the sweep goes
    on, and Hydra reports it as one paragraph (no traceback) when the sweep ends."""


def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra sweep (``run.py -m``)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def in_sweep() -> bool:
    """A sweep job, or a process a sweep job started (e.g. the ranks of a submitit node launch,
    which run in Hydra's run mode but inherit the parent run id)."""
    return in_multirun() or bool(os.environ.get(PARENT_ENV))


def job_overrides() -> list[str]:
    """This job's overrides of the swept keys (all its overrides when the keys are unknown)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = list(HydraConfig.get().overrides.task)
    keys = json.loads(os.environ[KEYS_ENV]) if os.environ.get(KEYS_ENV) else None
    if keys is None:
        return overrides
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [o.input_line for o in parsed if o.get_key_element().lstrip("+~") in keys]


def child_run_tags() -> dict[str, str]:
    """Tags of a sweep job's run: its parent and what makes it different; {} outside a sweep."""
    parent = os.environ.get(PARENT_ENV)
    if not (parent and HydraConfig.initialized()):
        return {}
    tags = {"mlflow.parentRunId": parent, "recog.overrides": " ".join(job_overrides())}
    number = job_number()
    if number is not None:
        tags["recog.sweep_job"] = number
    return tags


def child_run_name() -> str | None:
    """``#<job number> <swept overrides>`` for a sweep job's run; None outside a sweep."""
    if not (in_sweep() and HydraConfig.initialized()):
        return None
    number = job_number()
    return " ".join(filter(None, [f"#{number}" if number is not None else "", *job_overrides()])) or None


def job_number() -> str | None:
    """Hydra's job number in a sweep job; in a process a sweep job started (run mode), the
    ``RECOG_SWEEP_JOB_NUM`` it exported, if any."""
    if in_multirun():
        return str(HydraConfig.get().job.num)
    return os.environ.get(JOB_NUM_ENV) or None


def objective_names(cfg: DictConfig) -> list[str]:
    """The eval metrics a sweep can optimise (maximise): ``recog.metrics.metric_names``."""
    return metric_names(cfg.eval.recall_at)


def check_objective(cfg: DictConfig) -> str:
    objective = str(cfg.sweep.objective)
    if objective not in objective_names(cfg):
        raise ConfigError(
            f"sweep.objective={objective} is not an eval metric; choose one of "
            f"{', '.join(objective_names(cfg))} (recall_at_K and precision_at_K for K in eval.recall_at)"
        )
    return objective


def objective_value(cfg: DictConfig, result: Any) -> Any:
    """What a sweep job returns to the sweeper: ``sweep.objective`` of the stage's metrics (a
    float, which the Optuna sweeper maximises), else the stage's result unchanged."""
    objective = str(cfg.sweep.objective)
    if isinstance(result, dict) and objective in result:
        return float(result[objective])
    if is_optuna_sweeper(HydraConfig.get().sweeper):
        raise ConfigError(
            f"sweep.objective={objective} is not among this stage's results "
            f"({', '.join(sorted(result)) if isinstance(result, dict) else type(result).__name__}); "
            "the Optuna sweeper needs stage=train or stage=eval and an eval metric"
        )
    return result


def is_optuna_sweeper(sweeper_cfg) -> bool:
    """Whether the configured sweeper (``hydra.sweeper``) is Hydra's Optuna sweeper plugin, or a
    subclass of it: its ``_target_`` class, checked with ``issubclass`` (False when the plugin is
    not installed or the target cannot be imported)."""
    from recog.utils.runtime import targets_subclass_of

    return targets_subclass_of(sweeper_cfg, "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper", "OptunaSweeper")
