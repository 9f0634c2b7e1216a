"""The epochs of a training run: steps, eval every ``trainer.eval_every`` epochs, the best model by
``trainer.monitor``, ``checkpoints/last`` at every epoch end, and stopping on SIGTERM / SIGINT.

SIGTERM / SIGINT: during the steps, the ranks agree to stop after the current step and
``checkpoints/last`` is written mid-epoch; during an eval, the eval stops after its current batch
and ``checkpoints/last`` is written at the epoch's end with ``eval_pending`` (a resumed run runs
that eval first). Either way ``TrainingInterrupted`` is raised, naming the command that resumes.
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
from recog.evaluation import EvalInterrupted, Evaluator, is_better, write_metrics
from recog.metrics import format_metrics_table
from recog.training.prefetch import prefetch_to_device  # speed hook (issue 16)
from recog.training.resume import Checkpoints
from recog.training.step import StepRunner, freeze_batch_norm
from recog.utils.runtime import is_main_process

log = logging.getLogger(__name__)


class EpochLoop:
    """Trains ``runner``'s model on ``loader``, ``steps`` steps per epoch, as ``trainer`` (the
    ``trainer`` config section) says; ``tracker`` receives the metrics."""

    def __init__(self, runner: StepRunner, loader, steps: int, trainer: DictConfig, tracker):
        self.runner, self.loader, self.steps, self.tracker = runner, loader, steps, tracker
        self.epochs = int(trainer.epochs)
        self.eval_every = int(trainer.eval_every)
        self.log_every = max(1, int(trainer.log_every))
        self.monitor = str(trainer.get("monitor", "recall_at_1"))
        self.freeze_bn = bool(trainer.freeze_bn)

    @property
    def model(self):
        return self.runner.net._layers.model if hasattr(self.runner.net, "_layers") else self.runner.net.model

    def fit(self, state: dict, evaluator: Evaluator, checkpoints: Checkpoints) -> dict:
        """Epochs ``state["epoch"]`` .. ``trainer.epochs - 1`` (from ``state["step_in_epoch"]`` in the
        first); returns the final state. Raises ``TrainingInterrupted`` after saving when stopped."""
        if state.pop("eval_pending", False):  # stopped during this eval last time
            self.evaluate(state, evaluator, checkpoints)
            checkpoints.save_last(state, finished=state["epoch"] >= self.epochs)
        for epoch in range(state["epoch"], self.epochs):
            start = state["step_in_epoch"] if epoch == state["epoch"] else 0
            set_loader_epoch(self.loader, epoch, start)
            before = state["step"]
            state["step"] = self.train_epoch(epoch, state["step"], start)
            if start + state["step"] - before < self.steps:  # all ranks agreed to stop
                state["step_in_epoch"] = start + state["step"] - before
                checkpoints.save_last(state, finished=False)
                raise self.interrupted(state, checkpoints.run_dir)
            state["epoch"], state["step_in_epoch"] = epoch + 1, 0
            last_epoch = epoch + 1 == self.epochs
            if last_epoch or (epoch + 1) % self.eval_every == 0:
                self.evaluate(state, evaluator, checkpoints)
            checkpoints.save_last(state, finished=last_epoch)
            if not last_epoch and self.runner.should_stop():
                raise self.interrupted(state, checkpoints.run_dir)
        return state

    def evaluate(self, state: dict, evaluator: Evaluator, checkpoints: Checkpoints) -> None:
        """Eval after ``state["epoch"]`` epochs; a new best (by ``monitor``) is saved to ``best_model/``
        with ``metrics.json`` and the eval's report (``Evaluator.save_report``). Stopped by a
        signal: ``checkpoints/last`` with ``eval_pending``, then ``TrainingInterrupted``."""
        evaluator.stop = self.runner.stop
        try:
            metrics = evaluator(self.model)
        except EvalInterrupted:
            checkpoints.save_last(dict(state, eval_pending=True), finished=False)
            raise self.interrupted(state, checkpoints.run_dir, during_eval=True) from None
        self.tracker.log_metrics(metrics, step=state["step"])
        log.info("epoch %d eval\n%s", state["epoch"], format_metrics_table(metrics))
        if is_better(metrics, state["best"], self.monitor):
            state["best"] = dict(metrics, epoch=state["epoch"])
            checkpoints.save_best(state)
            if is_main_process():
                write_metrics(state["best"], checkpoints.run_dir / "metrics.json")
                evaluator.save_report(checkpoints.run_dir)

    def train_epoch(self, epoch: int, step: int, start: int = 0) -> int:
        """Batches ``start .. steps - 1`` of the epoch (after ``set_loader_epoch(loader, epoch, start)``);
        returns the global step count. Stops early, after a whole step, when the runner's stop request
        is set on any rank. One host sync per step (``StepRunner.read_flags``); loss values are read
        (and averaged over the ranks) only every ``log_every`` steps."""
        runner, steps = self.runner, self.steps
        self.model.train()
        if self.freeze_bn:
            freeze_batch_norm(self.model)
        world = parallel.world_size()
        bar = tqdm(
            total=steps,
            initial=start,
            desc=f"epoch {epoch + 1}/{self.epochs}",
            disable=not is_main_process(),
            dynamic_ncols=True,
        )
        tick, images_seen = time.perf_counter(), 0
        done = start  # batches of this epoch; not bar.n, which a disabled bar (ranks > 0) does not count
        try:
            # The loader yields this epoch's remaining batches and ends (KeyedBatches stops at
            # steps_per_epoch): iterating to the end keeps persistent workers in step.
            # speed hook (issue 16): on a GPU the next batch's copy is issued before this step runs
            for images, labels, device_images, device_labels in prefetch_to_device(self.loader):
                if done >= steps:  # a loader longer than the epoch (built without steps_per_epoch)
                    break
                # Host tensors (see build_train_loader): a copy, not a device read-back.
                self.loader.dataset.check_batch(labels.numpy(), training=True)
                losses = runner(device_images, device_labels, step=step + 1, epoch=epoch)
                step += 1
                done += 1
                images_seen += images.shape[0] * world
                bar.update(1)
                if step % self.log_every == 0 or done == steps:
                    values = parallel.mean_across_ranks(losses)
                    elapsed = time.perf_counter() - tick
                    values["lr"] = runner.optimizer.get_lr()
                    values["images_per_sec"] = images_seen / max(elapsed, 1e-9)
                    if runner.skip_nonfinite:
                        values["skipped_steps"] = runner.skipped
                    self.tracker.log_metrics(values, step=step)
                    bar.set_postfix(
                        loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}", img_s=f"{values['images_per_sec']:.0f}"
                    )
                    tick, images_seen = time.perf_counter(), 0
                if done < steps and runner.stop_agreed:
                    break
        finally:
            bar.close()  # also on an error: its message then starts on a line of its own
        return step

    def interrupted(self, state: dict, run_dir: Path, during_eval: bool = False) -> TrainingInterrupted:
        stop = self.runner.stop
        signum = (stop.signum if stop is not None else None) or signal.SIGTERM  # another rank may have received it
        if during_eval:
            where = f"the eval after epoch {state['epoch']} (resume runs it again)"
        elif state["step_in_epoch"]:
            where = f"epoch {state['epoch'] + 1}, step {state['step_in_epoch']}"
        else:
            where = f"the end of epoch {state['epoch']}"
        return TrainingInterrupted(
            f"stopped by {signal.Signals(signum).name} at {where} (global step {state['step']}); checkpoint "
            f"{run_dir / 'checkpoints' / 'last'}; continue with: {resume_command(run_dir)}",
            signum,
        )


def resume_command(run_dir: Path, world: int | None = None) -> str:
    """The command that continues the run in ``run_dir`` (its saved config does the rest)."""
    world = parallel.world_size() if world is None else world
    launcher = f" launcher.nproc_per_node={world}" if world > 1 else ""
    return f"python run.py resume=true hydra.run.dir={run_dir}{launcher}"
