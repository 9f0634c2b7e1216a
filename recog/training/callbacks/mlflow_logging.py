"""The metrics a training run logs to MLflow, and under which names (``MlflowLogging``)."""

from recog.training.callbacks.base import Callback


class MlflowLogging(Callback):
    """Logs to ``trainer.tracker`` (the run's ``MlflowTracker``; it logs nothing when MLflow is off or
    on ranks other than 0):

    - at the start: tag ``recog.world_size``;
    - every ``trainer.log_every`` steps (and each epoch's last): the loss and its terms (averaged
      over the ranks), ``lr``, ``images_per_sec`` (and ``skipped_steps``), at the global step;
    - after each eval: its metrics (``recall_at_K``, ``precision_at_K``, ``mAP``, ``mINP``) at the
      global step, before anything else acts on them (a failure to save the best model then leaves
      them logged);
    - at the end: the best eval's metrics again under their own names, one step after the last, so
      that the value MLflow shows for each (its latest) is the best model's while the earlier points
      stay the per-epoch history, plus ``best_epoch`` (``MlflowTracker.log_best``); and
      ``skipped_steps`` (with ``trainer.skip_nonfinite``), at the last step.

    The files a run writes are logged as artifacts by the callbacks that write them (``best_model/``,
    ``metrics.json``, the eval's report: ``KeepBestModel``; ``config.yaml``: ``SaveCheckpoint``;
    ``bad_images.tsv``: ``BadImageReport``; ``export/`` and the MLflow Model: ``ExportAfterTraining``).
    """

    def on_fit_start(self, trainer, state):
        trainer.tracker.set_tag("recog.world_size", str(trainer.world))

    def on_train_step_end(self, trainer, state, logged):
        if logged is not None:
            trainer.tracker.log_metrics(logged, step=state["step"])

    def on_eval_end(self, trainer, state, metrics):
        trainer.tracker.log_metrics(metrics, step=state["step"])

    def on_fit_end(self, trainer, state):
        if state["best"] is not None:
            trainer.tracker.log_best(state["best"], step=state["step"])
        if trainer.runner.skip_nonfinite:
            trainer.tracker.log_metrics({"skipped_steps": trainer.runner.skipped}, step=state["step"])
