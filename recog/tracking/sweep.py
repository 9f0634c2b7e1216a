"""Hydra sweeps in MLflow, by who runs the code: recog/tracking/sweep_parent.py (the sweeping
process: ``MlflowSweepCallback``, the parent run) and recog/tracking/sweep_job.py (inside a job).

This module only keeps the names conf/config.yaml (``hydra.callbacks``), run.py and the submitit
launcher import; it depends on the two, neither depends on it.
"""

from recog.tracking.sweep_job import (
    JOB_NUM_ENV,
    KEYS_ENV,
    PARENT_ENV,
    SweepJobFailed,
    check_objective,
    child_run_name,
    child_run_tags,
    in_multirun,
    in_sweep,
    job_number,
    objective_names,
    objective_value,
)
from recog.tracking.sweep_parent import MlflowSweepCallback, SweepParent, swept_keys
from recog.utils.runtime import divide_threads_among_jobs

__all__ = [
    "JOB_NUM_ENV",
    "KEYS_ENV",
    "PARENT_ENV",
    "MlflowSweepCallback",
    "SweepJobFailed",
    "SweepParent",
    "check_objective",
    "child_run_name",
    "child_run_tags",
    "divide_threads_among_jobs",
    "in_multirun",
    "in_sweep",
    "job_number",
    "objective_names",
    "objective_value",
    "swept_keys",
]
