"""``trainer.ema_decay``: evaluate and keep an exponential moving average of the weights (``AverageWeights``)."""

from recog.training.callbacks.base import Callback
from recog.training.ema import WeightAverage
from recog.utils import checkpoint

EMA = "ema"  # checkpoints/last/ema.safetensors


class AverageWeights(Callback):
    """With ``trainer.ema_decay`` set: a ``WeightAverage`` of the trained model, updated after every
    step, becomes the trainer's ``eval_model`` (so the evals and ``best_model/`` see the average) and
    part of ``checkpoints/last`` (``ema.safetensors``; its update count in the state as ``ema_updates``),
    from which a resumed run continues it. Without it, nothing."""

    def __init__(self):
        self.average = None

    def on_fit_start(self, trainer, state):
        decay = trainer.cfg.trainer.get("ema_decay")
        if decay is None:
            return
        self.average = WeightAverage(trainer.model, float(decay), updates=state.get("ema_updates", 0))
        if state.get("ema_updates") and not checkpoint.load_extra_weights(
            trainer.checkpoints.last, EMA, self.average.model
        ):
            raise RuntimeError(f"{trainer.checkpoints.last} counts EMA updates but holds no {EMA}.safetensors")
        trainer.eval_model = self.average.model
        trainer.checkpoints.extra[EMA] = self.average.model

    def on_train_step_end(self, trainer, state, logged):
        if self.average is not None:
            self.average.update()
            state["ema_updates"] = self.average.updates
