"""Loss functions: each a ``paddle.nn.Layer`` with ``forward(inputs, labels) -> scalar``."""

from recog.losses.cross_entropy import CELoss
from recog.losses.triplet import TripletLossV2

__all__ = ["CELoss", "TripletLossV2"]

from recog.losses.center import CenterLoss
from recog.losses.msm import MSMLoss
from recog.losses.npairs import NpairsLoss
from recog.losses.supcon import SupConLoss
from recog.losses.trihard import TriHardLoss
from recog.losses.triplet_v1 import TripletLoss

__all__ += ["CenterLoss", "MSMLoss", "NpairsLoss", "SupConLoss", "TriHardLoss", "TripletLoss"]

from recog.losses.contrastive import ContrastiveLoss
from recog.losses.dch import DCHLoss
from recog.losses.dshsd import DSHSDLoss
from recog.losses.eml import EmlLoss
from recog.losses.lcdsh import LCDSHLoss
from recog.losses.pairwise_cosface import PairwiseCosface
from recog.losses.xbm import XBM

__all__ += ["ContrastiveLoss", "DCHLoss", "DSHSDLoss", "EmlLoss", "LCDSHLoss", "PairwiseCosface", "XBM"]
