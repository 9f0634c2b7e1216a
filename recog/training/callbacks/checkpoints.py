"""The run's files: ``best_model/`` with ``metrics.json`` and the eval's report (``KeepBestModel``),
``checkpoints/last`` and ``config.yaml`` (``SaveCheckpoint``)."""

from omegaconf import OmegaConf

from recog.evaluation import REPORT_FILES, is_better, write_metrics
from recog.training.callbacks.base import Callback
from recog.utils import atomic
from recog.utils.runtime import is_main_process


class KeepBestModel(Callback):
    """After each eval: a new best by ``trainer.monitor`` (higher is better; ties keep the earlier)
    becomes ``state["best"]`` (its metrics and epoch) and is saved to ``best_model/`` (weights and
    config), ``metrics.json`` and the eval's report (``Evaluator.save_report``: ``retrieval.png``,
    ``worst_queries.png``, ``pair_scores.png``, ``threshold.json``). At the end they are logged as
    MLflow artifacts."""

    def on_eval_end(self, trainer, state, metrics):
        if not is_better(metrics, state["best"], str(trainer.cfg.trainer.monitor)):
            return
        state["best"] = dict(metrics, epoch=state["epoch"])
        trainer.checkpoints.save_best(state, trainer.eval_model)
        if is_main_process():
            write_metrics(state["best"], trainer.run_dir / "metrics.json")
            trainer.evaluator.save_report(trainer.run_dir)

    def on_fit_end(self, trainer, state):
        if state["best"] is None:
            return
        trainer.tracker.log_artifact(trainer.checkpoints.best)
        trainer.tracker.log_artifact(trainer.run_dir / "metrics.json")
        for name in REPORT_FILES:  # a picture that could not be written was a warning
            if (trainer.run_dir / name).is_file():
                trainer.tracker.log_artifact(trainer.run_dir / name)


class SaveCheckpoint(Callback):
    """``checkpoints/last`` (weights, optimizer, state, every rank's RNG state: what ``resume=true``
    continues from) at every epoch end and where a stop ends the run; the run's resolved
    ``config.yaml`` at the end, also as an MLflow artifact."""

    def __init__(self):
        self.saved = None  # (global step, eval pending) of the last save: a stop right after it saves nothing new

    def on_epoch_end(self, trainer, state):
        self.save(trainer, state, finished=state["epoch"] >= trainer.epochs)

    def on_stop(self, trainer, state):
        if self.saved != (state["step"], bool(state.get("eval_pending"))):
            self.save(trainer, state, finished=False)

    def save(self, trainer, state, finished: bool) -> None:
        trainer.checkpoints.save_last(state, finished=finished)  # a gather: every rank calls it
        self.saved = (state["step"], bool(state.get("eval_pending")))

    def on_fit_end(self, trainer, state):
        if is_main_process():
            text = OmegaConf.to_yaml(trainer.cfg, resolve=True)
            atomic.write_text(trainer.run_dir / "config.yaml", text, "the run's config")
        trainer.tracker.log_artifact(trainer.run_dir / "config.yaml")
