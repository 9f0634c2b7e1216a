"""Stages, one module each; ``run.py`` dispatches on ``cfg.stage``."""

from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from recog.config.schema import Stage
from recog.errors import TrainingInterrupted


def run_stage(cfg: DictConfig, run_dir: Path):
    """Run ``cfg.stage``; returns its result (train, eval: the metrics dict).

    An unreachable tracking server stops the stage before any work (``mlflow.required``). Inside
    a sweep, a job that fails is recorded as a FAILED MLflow run even when it failed before its
    stage started one (``record_failed_job``; the runs the stage started are collected while it
    runs, ``recog.tracking.collect_runs``).
    """
    from recog.stages import evaluate, export, index, predict, train
    from recog.tracking import check_reachable, collect_runs
    from recog.tracking.mlflow_tracker import record_failed_job
    from recog.tracking.sweep_job import in_multirun

    stages: dict[Stage, Callable] = {
        Stage.train: train.run,
        Stage.eval: evaluate.run,
        Stage.export: export.run,
        Stage.predict: predict.run,
        Stage.index: index.run,
    }
    check_reachable(cfg)
    with collect_runs() as started:
        try:
            return stages[Stage(cfg.stage)](cfg, run_dir)
        except TrainingInterrupted:
            raise
        except Exception as error:
            if in_multirun():
                record_failed_job(cfg, error, started, run_dir)
            raise
