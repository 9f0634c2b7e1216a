"""What a training run does at fixed points of the loop: the ``Callback`` protocol (base.py) and
the built-in callbacks. The train stage lists the ones a run has (``recog.stages.train.CALLBACKS``)."""

from recog.training.callbacks.bad_images import BadImageReport
from recog.training.callbacks.base import Callback
from recog.training.callbacks.checkpoints import KeepBestModel, SaveCheckpoint
from recog.training.callbacks.ema import AverageWeights
from recog.training.callbacks.mlflow_logging import MlflowLogging
from recog.training.callbacks.progress import ProgressFile
from recog.training.callbacks.stop import StopOnSignal

__all__ = [
    "AverageWeights",
    "BadImageReport",
    "Callback",
    "KeepBestModel",
    "MlflowLogging",
    "ProgressFile",
    "SaveCheckpoint",
    "StopOnSignal",
]
