"""An exponential moving average (EMA) of the model's weights, evaluated and saved instead of them.

After every optimiser step each tensor of the model's state (parameters and BatchNorm running
statistics) is blended into its average: ``avg = d * avg + (1 - d) * value`` with
``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so that the first steps (when the average
would still be mostly the initial weights) count more (PaddleClas's and timm's EMA use this form).
The averaged weights are what evaluation sees and what ``best_model/`` and the export hold; training
goes on with the raw weights. The average is part of ``checkpoints/last``, so a resumed run continues
it exactly.

``trainer.ema_decay`` (None: off). Typical values: 0.999 for a few thousand steps, 0.9999 for long runs;
the average covers about ``1 / (1 - decay)`` of the latest steps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import paddle


class WeightAverage:
    """EMA of ``model``'s floating-point state tensors (``[name] -> float32 copy``)."""

    def __init__(self, model: paddle.nn.Layer, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the EMA decay must be in (0, 1), got {decay}")
        self.model = model
        self.decay = float(decay)
        self.updates = 0
        with paddle.no_grad():
            self.average = {name: value.detach().astype("float32").clone() for name, value in self._tensors()}

    def _tensors(self) -> Iterator[tuple[str, paddle.Tensor]]:
        for name, value in self.model.state_dict().items():
            if paddle.is_floating_point(value):
                yield name, value

    def rate(self) -> float:
        """The decay of the next update."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    def update(self) -> None:
        """Blend the model's current weights into the average (after an optimiser step)."""
        d = self.rate()
        with paddle.no_grad():
            for name, value in self._tensors():
                average = self.average[name]
                average.scale_(d)
                average.add_(value.detach().astype("float32") * (1.0 - d))
        self.updates += 1

    @contextlib.contextmanager
    def applied(self) -> Iterator[paddle.nn.Layer]:
        """The model with the averaged weights inside the block, its own weights restored after."""
        saved = {name: value.detach().clone() for name, value in self._tensors()}
        self._assign(self.average)
        try:
            yield self.model
        finally:
            self._assign(saved)

    def _assign(self, values: dict) -> None:
        with paddle.no_grad():
            for name, value in self._tensors():
                value.set_value(values[name].astype(value.dtype))

    def state_dict(self) -> dict:
        """``{"updates": n, "decay": d, "average": {name: float32 array}}`` for a checkpoint."""
        return {
            "updates": self.updates,
            "decay": self.decay,
            "average": {name: value.numpy() for name, value in self.average.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from ``state_dict()``; the names and shapes must match the model's."""
        average = state["average"]
        if set(average) != set(self.average):
            missing, extra = sorted(set(self.average) - set(average)), sorted(set(average) - set(self.average))
            raise ValueError(f"the saved weight average does not fit the model (missing {missing}, unknown {extra})")
        for name, value in average.items():
            value = np.asarray(value, dtype=np.float32)
            if list(value.shape) != list(self.average[name].shape):
                raise ValueError(f"the saved weight average of {name} has shape {list(value.shape)}")
            self.average[name] = paddle.to_tensor(value)
        self.updates = int(state["updates"])
