"""An exponential moving average (EMA) of the model's weights, evaluated and saved instead of them.

After every optimiser step each floating-point tensor of the model's state (parameters and
BatchNorm running statistics) is blended into a copy of the model: ``avg = d * avg + (1 - d) * value``
with ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so that the first steps, when the
average would still be mostly the initial weights, count more (the form PaddleClas's and timm's
EMA use). The copy (``WeightAverage.model``) is what evaluation sees and what ``best_model/`` and
the export hold; training goes on with the raw weights. The copy is part of ``checkpoints/last``
(``ema.safetensors``) and the update count of its state, so a resumed run continues it exactly.

``trainer.ema_decay`` (None: off). The average covers about ``1 / (1 - decay)`` of the latest steps:
0.999 for a few thousand steps, 0.9999 for long runs.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import paddle


class WeightAverage:
    """``model``: an EMA copy of ``source`` (same class and names), updated by ``update()``."""

    def __init__(self, source: paddle.nn.Layer, decay: float, updates: int = 0):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the EMA decay must be in (0, 1), got {decay}")
        self.source = source
        self.decay = float(decay)
        self.updates = int(updates)
        self.model = copy.deepcopy(source)
        self.model.eval()
        for param in self.model.parameters():
            param.stop_gradient = True

    def _pairs(self) -> Iterator[tuple[paddle.Tensor, paddle.Tensor]]:
        averaged = self.model.state_dict()
        for name, value in self.source.state_dict().items():
            if paddle.is_floating_point(value):
                yield averaged[name], value

    def rate(self) -> float:
        """The decay of the next update."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    def update(self) -> None:
        """Blend ``source``'s current weights into the average (after an optimiser step)."""
        d = self.rate()
        with paddle.no_grad():
            for average, value in self._pairs():
                average.set_value(average * d + value.detach().astype(average.dtype) * (1.0 - d))
        self.updates += 1
