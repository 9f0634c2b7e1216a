"""Loss functions: each a ``paddle.nn.Layer`` with ``forward(inputs, labels) -> scalar``."""

from recog.losses.cross_entropy import CELoss
from recog.losses.triplet import TripletLossV2

__all__ = ["CELoss", "TripletLossV2"]
