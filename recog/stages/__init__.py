"""Stages, one module each; ``run.py`` dispatches on ``cfg.stage``."""

from pathlib import Path
from typing import Callable, Dict

from omegaconf import DictConfig

from recog.config.schema import Stage


def run_stage(cfg: DictConfig, run_dir: Path):
    from recog.stages import evaluate, export, predict, train

    stages: Dict[Stage, Callable] = {Stage.train: train.run, Stage.eval: evaluate.run, Stage.export: export.run,
                                     Stage.predict: predict.run}
    return stages[Stage(cfg.stage)](cfg, run_dir)
