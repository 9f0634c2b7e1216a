"""Stages, one module each; ``run.py`` dispatches on ``cfg.stage``."""

from pathlib import Path
from typing import Callable, Dict

from omegaconf import DictConfig

from recog.config.schema import Stage
from recog.errors import TrainingInterrupted


def run_stage(cfg: DictConfig, run_dir: Path):
    """Run ``cfg.stage``; returns its result (train, eval: the metrics dict).

    An unreachable tracking server stops the stage before any work (``mlflow.required``). Inside
    a sweep, a job that fails is recorded as a FAILED MLflow run even when it failed before its
    stage started one (see recog/tracking/sweep.py).
    """
    from recog.stages import evaluate, export, predict, train
    from recog.tracking import MlflowTracker, check_reachable
    from recog.tracking.sweep import in_multirun, record_failed_job

    stages: Dict[Stage, Callable] = {Stage.train: train.run, Stage.eval: evaluate.run, Stage.export: export.run,
                                     Stage.predict: predict.run}
    check_reachable(cfg)
    started = len(MlflowTracker.started_run_ids)
    try:
        return stages[Stage(cfg.stage)](cfg, run_dir)
    except TrainingInterrupted:
        raise
    except Exception as error:
        if in_multirun():
            record_failed_job(cfg, error, MlflowTracker.started_run_ids[started:], run_dir)
        raise
