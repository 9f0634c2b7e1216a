"""The training loop: epochs of steps, an eval every ``trainer.eval_every`` epochs (and after the
last), and callbacks at fixed points (recog/training/callbacks/base.py says which and when).

What a run does around the loop is its callbacks' (the train stage lists them): keeping the best
model, writing ``checkpoints/last``, logging to MLflow, the bad-image report, the export after
training, stopping on a signal. The loop itself owns only the order and the stopping points:

- SIGTERM / SIGINT (``stop``, a ``StopRequest`` every rank holds): during the steps, the ranks
  agree to stop after the current step (``StopOnSignal``); during an eval, the eval stops after
  its current batch and ``state["eval_pending"]`` is set (a resumed run runs that eval first).
  Either way the callbacks' ``on_stop`` run (``checkpoints/last`` is written) and
  ``TrainingInterrupted`` is raised, naming the command that resumes. After the last epoch, a stop
  request ends the run before the next callback's ``on_fit_end``, or after the last one.
"""

import logging
import signal
import time
from pathlib import Path

from omegaconf import DictConfig
from tqdm import tqdm

from recog.data import set_loader_epoch
from recog.distributed import parallel
from recog.errors import TrainingInterrupted
from recog.evaluation import EvalInterrupted
from recog.metrics import format_metrics_table
from recog.training.callbacks.base import Callback
from recog.training.step import StepRunner, freeze_batch_norm
from recog.utils.runtime import is_main_process, python_command

log = logging.getLogger(__name__)


class Trainer:
    """Trains ``model`` through ``runner`` (its ``StepRunner``: the net, possibly data parallel, the
    optimizer and the step strategy) on ``loader`` (``steps`` batches an epoch) as ``cfg.trainer``
    says, evaluating with ``evaluator``. ``cfg`` (the run's resolved config), ``run_dir``,
    ``checkpoints`` (``recog.training.resume.Checkpoints``), ``tracker`` (an ``MlflowTracker``),
    ``stop`` (a ``StopRequest``) and ``world`` (the process count) are there for the
    ``callbacks``, called in list order."""

    def __init__(
        self,
        cfg: DictConfig,
        run_dir: Path,
        model,
        runner: StepRunner,
        loader,
        steps: int,
        evaluator,
        checkpoints,
        tracker,
        callbacks=(),
        stop=None,
    ):
        self.cfg, self.run_dir, self.model, self.runner = cfg, Path(run_dir), model, runner
        self.loader, self.steps, self.evaluator, self.checkpoints = loader, steps, evaluator, checkpoints
        self.tracker, self.callbacks, self.stop = tracker, list(callbacks), stop
        self.eval_model = model  # what evals see and best_model/ holds (a callback may set another: the EMA's)
        runner.stop = evaluator.stop = stop
        self.world = parallel.world_size()
        trainer = cfg.trainer
        self.epochs, self.eval_every = int(trainer.epochs), int(trainer.eval_every)
        self.log_every, self.freeze_bn = max(1, int(trainer.log_every)), bool(trainer.freeze_bn)

    def call(self, hook: str, *args) -> None:
        """``hook`` of every callback that has one (overrides ``Callback``'s), in list order."""
        for callback in self.callbacks:
            if _overrides(callback, hook):
                getattr(callback, hook)(self, *args)

    def fit(self, state: dict) -> dict:
        """Epochs ``state["epoch"]`` .. ``trainer.epochs - 1`` (from ``state["step_in_epoch"]`` in the
        first), then the callbacks' ``on_fit_end``; returns the final state."""
        try:
            self.call("on_fit_start", state)
            if state.pop("eval_pending", False):  # stopped during this eval last time
                self.evaluate(state)
                self.call("on_epoch_end", state)
            while state["epoch"] < self.epochs:
                self.train_epoch(state)
                state["epoch"], state["step_in_epoch"] = state["epoch"] + 1, 0
                if state["epoch"] == self.epochs or state["epoch"] % self.eval_every == 0:
                    self.evaluate(state)
                self.call("on_epoch_end", state)
            self.finish(state)
        except BaseException as error:
            self.call("on_exception", state, error)
            raise
        return state

    def train_epoch(self, state: dict) -> None:
        """The epoch's batches from ``state["step_in_epoch"]``, counting ``state["step"]`` and
        ``state["step_in_epoch"]``. One host sync per step (``StepRunner.read_flags``); the losses
        are read (and averaged over the ranks) only every ``log_every`` steps, for ``on_train_step_end``."""
        epoch, runner = state["epoch"], self.runner
        set_loader_epoch(self.loader, epoch, state["step_in_epoch"])
        self.model.train()
        if self.freeze_bn:
            freeze_batch_norm(self.model)
        world = parallel.world_size()
        bar = tqdm(
            total=self.steps,
            initial=state["step_in_epoch"],
            desc=f"epoch {epoch + 1}/{self.epochs}",
            disable=not is_main_process(),
            dynamic_ncols=True,
        )
        tick, images_seen = time.perf_counter(), 0
        try:
            # The loader yields this epoch's remaining batches and ends (KeyedBatches stops at
            # steps_per_epoch): iterating to the end keeps persistent workers in step.
            for images, labels, device_images, device_labels in runner.strategy.batches(self.loader):
                if state["step_in_epoch"] >= self.steps:  # a loader longer than the epoch
                    break
                # Host tensors (see build_train_loader): a copy, not a device read-back.
                self.loader.dataset.check_batch(labels.numpy(), training=True)
                losses = runner(device_images, device_labels, step=state["step"] + 1, epoch=epoch)
                state["step"] += 1
                state["step_in_epoch"] += 1
                images_seen += images.shape[0] * world
                bar.update(1)
                logged = None
                if state["step"] % self.log_every == 0 or state["step_in_epoch"] == self.steps:
                    logged = parallel.mean_across_ranks(losses)
                    logged["lr"] = runner.optimizer.get_lr()
                    logged["images_per_sec"] = images_seen / max(time.perf_counter() - tick, 1e-9)
                    if runner.skip_nonfinite:
                        logged["skipped_steps"] = runner.skipped
                    bar.set_postfix(
                        loss=f"{logged['loss']:.4f}", lr=f"{logged['lr']:.2e}", img_s=f"{logged['images_per_sec']:.0f}"
                    )
                    tick, images_seen = time.perf_counter(), 0
                self.call("on_train_step_end", state, logged)
        finally:
            bar.close()  # also on an error: its message then starts on a line of its own

    def evaluate(self, state: dict) -> None:
        """The eval after ``state["epoch"]`` epochs, then ``on_eval_end``; a stop during it: ``stopped``."""
        try:
            metrics = self.evaluator(self.eval_model)
        except EvalInterrupted:
            state["eval_pending"] = True
            self.stopped(state)
        log.info("epoch %d eval\n%s", state["epoch"], format_metrics_table(metrics))
        self.call("on_eval_end", state, metrics)

    def finish(self, state: dict) -> None:
        """After the last epoch: the ``on_fit_end`` of each callback that has one, in order; a stop
        request ends the run before the next of them that does a final step (the run is then
        incomplete), or after the last (complete)."""
        if self.runner.skipped:
            log.warning("%d training step(s) skipped for a non-finite loss or gradient", self.runner.skipped)
        for callback in [c for c in self.callbacks if _overrides(c, "on_fit_end")]:
            if callback.final_step and self.stop is not None and self.stop.requested:
                raise self.interrupted(state, after_training=True)
            callback.on_fit_end(self, state)
        if self.stop is not None and self.stop.requested:
            raise self.interrupted(state, after_training=True, complete=True)

    def stopped(self, state: dict) -> None:
        """Every rank agreed to stop: the callbacks' ``on_stop``, then ``TrainingInterrupted``."""
        self.call("on_stop", state)
        raise self.interrupted(state)

    def interrupted(self, state: dict, after_training: bool = False, complete: bool = False) -> TrainingInterrupted:
        stop = self.stop
        signum = (stop.signum if stop is not None else None) or signal.SIGTERM  # another rank may have received it
        name = signal.Signals(signum).name
        if after_training:
            done = f"training is complete (best model {self.checkpoints.best})"
            if complete:
                message = f"{name} received after the run had completed: {done}, nothing is left to do"
            else:
                message = (
                    f"stopped by {name} after training: {done}, but the run's final steps (MLflow artifacts, "
                    f"the export) are not; finish them with: {resume_command(self.run_dir)}"
                )
            return TrainingInterrupted(message, signum, complete=complete)
        if state.get("eval_pending"):
            where = f"the eval after epoch {state['epoch']} (resume runs it again)"
        elif state["step_in_epoch"]:
            where = f"epoch {state['epoch'] + 1}, step {state['step_in_epoch']}"
        else:
            where = f"the end of epoch {state['epoch']}"
        return TrainingInterrupted(
            f"stopped by {name} at {where} (global step {state['step']}); checkpoint "
            f"{self.checkpoints.last}; continue with: {resume_command(self.run_dir)}",
            signum,
        )


def _overrides(callback: Callback, hook: str) -> bool:
    return getattr(type(callback), hook, None) is not getattr(Callback, hook)


def resume_command(run_dir: Path, world: int | None = None) -> str:
    """The command that continues the run in ``run_dir`` (its saved config does the rest)."""
    world = parallel.world_size() if world is None else world
    launcher = f" launcher.nproc_per_node={world}" if world > 1 else ""
    return f"{python_command()} run.py resume=true hydra.run.dir={run_dir}{launcher}"
