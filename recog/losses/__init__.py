"""Loss functions: each a ``paddle.nn.Layer`` with ``forward(inputs, labels) -> scalar``.

A loss config's terms are ``loss.<term>: {weight, input, fn: {_target_, ...}}``: the model output
the term reads (``logits``, ``features`` or ``backbone``), its weight, and one of these under
``fn``; ``recog.losses.weighted.WeightedLoss`` sums them. A new loss is its file plus
``conf/loss/<name>.yaml`` (see CONTRIBUTING.md); exporting it here is a convenience, not a must.

With several data-parallel processes a term gets the global batch (every process's rows, see
``WeightedLoss``), unless its class declares ``per_sample = True`` (CE, center loss).
"""

from recog.losses.center import CenterLoss
from recog.losses.contrastive import ContrastiveLoss
from recog.losses.cross_entropy import CELoss
from recog.losses.dch import DCHLoss
from recog.losses.dshsd import DSHSDLoss
from recog.losses.eml import EmlLoss
from recog.losses.lcdsh import LCDSHLoss
from recog.losses.msm import MSMLoss
from recog.losses.npairs import NpairsLoss
from recog.losses.pairwise_cosface import PairwiseCosface
from recog.losses.supcon import SupConLoss
from recog.losses.trihard import TriHardLoss
from recog.losses.triplet import TripletLoss
from recog.losses.triplet_v2 import TripletLossV2
from recog.losses.xbm import XBM

__all__ = [
    "CELoss",
    "CenterLoss",
    "ContrastiveLoss",
    "DCHLoss",
    "DSHSDLoss",
    "EmlLoss",
    "LCDSHLoss",
    "MSMLoss",
    "NpairsLoss",
    "PairwiseCosface",
    "SupConLoss",
    "TriHardLoss",
    "TripletLoss",
    "TripletLossV2",
    "XBM",
]
