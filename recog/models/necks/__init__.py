"""Necks: ``[N, in_channels] -> [N, embedding_size]``; each exposes ``embedding_size``."""

from recog.models.necks.fc import FCNeck

__all__ = ["FCNeck"]
from recog.models.necks.bnneck import BNNeck
from recog.models.necks.fpn import FPNNeck
from recog.models.necks.tanh import TanhNeck

__all__ += ["BNNeck", "TanhNeck", "FPNNeck"]
