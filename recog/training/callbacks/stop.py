"""Stopping on SIGTERM / SIGINT at a point every rank agrees on (``StopOnSignal``)."""

from recog.training.callbacks.base import Callback


class StopOnSignal(Callback):
    """Ends training when a rank received SIGTERM or SIGINT (``trainer.stop``, a ``StopRequest``):
    after the step it arrived in (every step's flag read-back carries the ranks' agreement,
    ``StepRunner.stop_agreed``), or at the end of an epoch (after its eval and checkpoint; a
    collective). ``trainer.stopped`` then runs the ``on_stop`` hooks (``checkpoints/last``) and
    raises ``TrainingInterrupted``. A stop during an eval is the trainer's (the eval stops after its
    current batch); after the last epoch, the trainer checks between the ``on_fit_end`` hooks."""

    def on_train_step_end(self, trainer, state, logged):
        if trainer.runner.stop_agreed and state["step_in_epoch"] < trainer.steps:
            trainer.stopped(state)

    def on_epoch_end(self, trainer, state):
        if state["epoch"] < trainer.epochs and trainer.runner.should_stop():
            trainer.stopped(state)
