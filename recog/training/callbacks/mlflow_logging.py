"""Everything a training run logs to MLflow (``MlflowLogging``): which metrics, under which names."""

from recog.training.callbacks.base import Callback


class MlflowLogging(Callback):
    """Logs to ``trainer.tracker`` (the run's ``MlflowTracker``; it logs nothing when MLflow is off or
    on ranks other than 0):

    - at the start: tag ``recog.world_size``;
    - every ``trainer.log_every`` steps (and each epoch's last): the loss and its terms (averaged
      over the ranks), ``lr``, ``images_per_sec`` (and ``skipped_steps``), at the global step;
    - after each eval: its metrics (``recall_at_K``, ``precision_at_K``, ``mAP``, ``mINP``) at the
      global step;
    - at the end: artifacts ``best_model/``, ``metrics.json``, ``retrieval.png`` and
      ``config.yaml``; the best eval's metrics as ``best_<name>`` (``best_epoch`` included) and
      ``skipped_steps`` (with ``trainer.skip_nonfinite``), at the last step.
    """

    def on_fit_start(self, trainer, state):
        trainer.tracker.set_tag("recog.world_size", str(trainer.world))

    def on_train_step_end(self, trainer, state, logged):
        if logged is not None:
            trainer.tracker.log_metrics(logged, step=state["step"])

    def on_eval_end(self, trainer, state, metrics):
        trainer.tracker.log_metrics(metrics, step=state["step"])

    def on_fit_end(self, trainer, state):
        tracker, run_dir = trainer.tracker, trainer.run_dir
        if state["best"] is not None:
            tracker.log_artifact(trainer.checkpoints.best)
            tracker.log_artifact(run_dir / "metrics.json")
            if (run_dir / "retrieval.png").is_file():  # a picture that could not be written was a warning
                tracker.log_artifact(run_dir / "retrieval.png")
            tracker.log_metrics({f"best_{k}": v for k, v in state["best"].items()}, step=state["step"])
        if trainer.runner.skip_nonfinite:
            tracker.log_metrics({"skipped_steps": trainer.runner.skipped}, step=state["step"])
        tracker.log_artifact(run_dir / "config.yaml")  # written by SaveCheckpoint.on_fit_end, before this
