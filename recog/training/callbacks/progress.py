"""Where a training run is, as a file other programs read (``ProgressFile``)."""

import json
import os
import time
from pathlib import Path

from recog.training.callbacks.base import Callback
from recog.utils.runtime import is_main_process


class ProgressFile(Callback):
    """With ``trainer.progress_file=PATH``, rank 0 rewrites PATH (JSON) at the loop's fixed points, for
    a program that watches or stops a run at a chosen point (a scheduler, a dashboard, the tests)::

        {"event": "step", "epoch": 1, "step_in_epoch": 3, "step": 3, "epochs": 2, "steps": 25,
         "pid": 4242, "time": 1767225600.0}

    ``event``: ``start`` (before the first step), ``step`` (after each step), ``eval`` (after each
    eval), ``epoch_end`` (after the epoch's eval and checkpoint), ``stop`` (stopping on a signal,
    after ``checkpoints/last``), ``end`` (after the last of the run's final steps); ``epoch`` (from 1)
    and ``step_in_epoch``: the epoch under way and its steps done (at an epoch end: the epoch just
    ended and 0; before the first step of a new run: 0 and 0), ``step``: the global step. Each version replaces the last
    whole (a rename), so a reader never sees half of one; it is not synced to disk (a progress mark,
    not a record). Null (the default): no file."""

    final_step = False  # its "end" is written also when a stop request came during the final steps

    def __init__(self):
        self.path: Path | None = None

    def on_fit_start(self, trainer, state):
        target = trainer.cfg.trainer.get("progress_file")
        self.path = Path(target) if target and is_main_process() else None
        self._write(trainer, state, "start")

    def on_train_step_end(self, trainer, state, logged):
        self._write(trainer, state, "step")

    def on_eval_end(self, trainer, state, metrics):
        self._write(trainer, state, "eval")

    def on_epoch_end(self, trainer, state):
        self._write(trainer, state, "epoch_end")

    def on_stop(self, trainer, state):
        self._write(trainer, state, "stop")

    def on_fit_end(self, trainer, state):
        self._write(trainer, state, "end")

    def _write(self, trainer, state: dict, event: str) -> None:
        if self.path is None:
            return
        record = {
            "event": event,
            "epoch": state["epoch"] + (1 if state["step_in_epoch"] else 0),
            "step_in_epoch": state["step_in_epoch"],
            "step": state["step"],
            "epochs": trainer.epochs,
            "steps": trainer.steps,
            "pid": os.getpid(),
            "time": time.time(),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        partial.write_text(json.dumps(record) + "\n")
        os.replace(partial, self.path)
