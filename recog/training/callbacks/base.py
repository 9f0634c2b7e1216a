"""The callback protocol of ``recog.training.trainer.Trainer``: what a training run does at fixed points.

Every hook gets the ``Trainer`` (its ``cfg``, ``run_dir``, ``model``, ``runner``, ``evaluator``,
``checkpoints``, ``tracker``, ``stop``, ``epochs``, ``steps``) and the run's ``state`` (``epoch``:
completed epochs, ``step``: global steps, ``step_in_epoch``, ``best``: the best eval's metrics or
None, ``mlflow_run_id``), which a hook may read and, where said, change. Every rank calls every
hook at the same point, so a hook may use collectives; files and MLflow are rank 0's
(``recog.utils.runtime.is_main_process``, ``trainer.tracker`` logs nothing on other ranks).

In order of a run::

    on_fit_start(trainer, state)                  before the first step (also of a resumed run)
    on_train_step_end(trainer, state, logged)     after every step; ``logged`` on every
                                                  trainer.log_every-th step and the epoch's last:
                                                  the losses averaged over the ranks, lr,
                                                  images_per_sec (and skipped_steps), else None
    on_eval_end(trainer, state, metrics)          after each eval (``state["epoch"]`` epochs done)
    on_epoch_end(trainer, state)                  after each epoch and its eval, if any
    on_stop(trainer, state)                       the ranks agreed to stop (SIGTERM / SIGINT) mid-epoch,
                                                  during an eval (``state["eval_pending"]``) or at an
                                                  epoch end; ``TrainingInterrupted`` follows
    on_fit_end(trainer, state)                    after the last epoch, callback by callback; a stop
                                                  request skips the callbacks after it (the run's
                                                  final steps; see ``Callback.final_step``)
    on_exception(trainer, state, error)           any exception out of the above (the run then fails
                                                  or stops), before it propagates

A callback overrides the hooks it needs. The train stage's list (``recog.stages.train.CALLBACKS``)
is where a built-in one is registered; ``recog.stages.train.run(cfg, run_dir, callbacks=[...])``
adds more after them.
"""


class Callback:
    """Base class: every hook does nothing."""

    # Whether on_fit_end does one of the run's final steps (artifacts, the export): a stop request
    # before it leaves the run incomplete. False for a callback that only reports (it runs anyway).
    final_step: bool = True

    def on_fit_start(self, trainer, state: dict) -> None:
        pass

    def on_train_step_end(self, trainer, state: dict, logged: dict[str, float] | None) -> None:
        pass

    def on_eval_end(self, trainer, state: dict, metrics: dict[str, float]) -> None:
        pass

    def on_epoch_end(self, trainer, state: dict) -> None:
        pass

    def on_stop(self, trainer, state: dict) -> None:
        pass

    def on_fit_end(self, trainer, state: dict) -> None:
        pass

    def on_exception(self, trainer, state: dict, error: BaseException) -> None:
        pass
