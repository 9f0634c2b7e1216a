"""Necks: ``[N, in_channels] -> [N, embedding_size]``; each exposes ``embedding_size``.

``FPNNeck`` instead takes the backbone's stage maps (``multi_scale = True``).
"""

from recog.models.necks.bnneck import BNNeck
from recog.models.necks.fc import FCNeck
from recog.models.necks.fpn import FPNNeck
from recog.models.necks.tanh import TanhNeck

__all__ = ["BNNeck", "FCNeck", "FPNNeck", "TanhNeck"]
