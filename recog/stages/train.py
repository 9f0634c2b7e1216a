"""Train stage: P x K batches, weighted losses, eval every few epochs, best model by ``trainer.monitor``.

Writes into the run directory::

    checkpoints/last/   weights, optimizer (with the LR-schedule position), epoch, step within the
                        epoch, RNG states and MLflow run id (for resume=true; recog/training/resume.py)
    best_model/         weights + resolved config of the best eval so far (highest trainer.monitor)
    metrics.json        the best model's metrics
    retrieval.png, worst_queries.png, pair_scores.png, threshold.json: the best model's eval report
    config.yaml         the run's resolved config, at the end
    export/             the best model exported (export.after_train), logged as the run's MLflow Model
    .recog.lock         while training: host and PID of the process (one training per run dir)

Built from config by ``recog.builders`` (``prepare_training``, ``build_trainer``), trained by
``recog.training.trainer.Trainer``, whose loop calls ``CALLBACKS`` (recog/training/callbacks/) at
fixed points. Data parallel (``paddle.distributed.launch``, recog/distributed/launch.py): every rank
trains on its share of each P x K step through ``paddle.DataParallel`` and evaluates its shard of
the eval set; rank 0 alone logs to MLflow, draws progress bars and writes files.

SIGTERM / SIGINT at any point: the run stops after the current step (or eval batch, or final
step), writes ``checkpoints/last``, releases the lock, marks the MLflow run KILLED (FINISHED if
nothing was left to do) and raises ``TrainingInterrupted`` (``run.py`` exits 143 / 130), whose
message is the command that continues it: ``python run.py resume=true hydra.run.dir=RUN``.
A NaN or Inf loss or gradient stops the run before its step (``NonFiniteError``, exit code 2;
``trainer.skip_nonfinite=true`` skips and counts such steps).
"""

import contextlib
import logging
from collections.abc import Sequence

from omegaconf import DictConfig

from recog.builders import build_trainer, prepare_training
from recog.evaluation import score
from recog.stages.export import ExportAfterTraining
from recog.training.callbacks import (
    AverageWeights,
    BadImageReport,
    Callback,
    KeepBestModel,
    MlflowLogging,
    ProgressFile,
    SaveCheckpoint,
    StopOnSignal,
)
from recog.training.run_lock import RunLock
from recog.utils.interrupt import StopRequest

log = logging.getLogger(__name__)

# What a training run does at the loop's fixed points, in this order (a new one: one class, one line here).
CALLBACKS: tuple[type[Callback], ...] = (
    MlflowLogging,  # metrics (an eval's first, before anything acts on them)
    AverageWeights,  # trainer.ema_decay: evals and best_model/ see the weights' moving average
    KeepBestModel,  # best_model/, metrics.json, the eval's report (pictures, threshold.json)
    SaveCheckpoint,  # checkpoints/last, config.yaml
    BadImageReport,  # bad_images.tsv
    ExportAfterTraining,  # export/ and the run's MLflow Model
    ProgressFile,  # trainer.progress_file: where the run is, for a program watching it
    StopOnSignal,  # SIGTERM / SIGINT, after the checkpoint of an epoch end
)


def run(cfg: DictConfig, run_dir, callbacks: Sequence[Callback] = ()) -> dict[str, float]:
    """Train ``cfg``'s model on ``cfg.dataset``; returns the best eval metrics. ``callbacks``: more
    ``Callback`` instances, called after the built-in ones."""
    cfg, run_dir, rank, world, amp = prepare_training(cfg, run_dir)
    with StopRequest() as stop, RunLock(run_dir) if rank == 0 else contextlib.nullcontext():
        all_callbacks = [callback() for callback in CALLBACKS] + list(callbacks)
        trainer, state = build_trainer(cfg, run_dir, rank, world, amp, stop, all_callbacks)
        with trainer.tracker.run_status():
            state = trainer.fit(state)
    monitor = str(cfg.trainer.monitor)
    if state["best"] is None:
        log.warning("no best model: no eval gave a finite %s", monitor)
    else:
        log.info("best model: %s (%s %.4f)", trainer.checkpoints.best, monitor, score(state["best"], monitor))
    return state["best"] or {}
