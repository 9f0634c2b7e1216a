"""Loss functions: each a ``paddle.nn.Layer`` with ``forward(inputs, labels) -> scalar``.

Every term of a loss config names one of these, the model output it reads (``logits`` or
``features``) and its weight; ``recog.losses.weighted.WeightedLoss`` sums them.
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
from recog.losses.triplet import TripletLossV2
from recog.losses.triplet_v1 import TripletLoss
from recog.losses.xbm import XBM

__all__ = ["CELoss", "CenterLoss", "ContrastiveLoss", "DCHLoss", "DSHSDLoss", "EmlLoss", "LCDSHLoss", "MSMLoss",
           "NpairsLoss", "PairwiseCosface", "SupConLoss", "TriHardLoss", "TripletLoss", "TripletLossV2", "XBM"]
