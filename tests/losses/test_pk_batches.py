"""Every loss that compares samples of the same class refuses a batch without P x K structure,
with a message naming the loss and the setting to change (data.samples_per_class)."""

import numpy as np
import paddle
import pytest

import recog  # noqa: F401
from recog.errors import ConfigError
from recog.losses import (
    EmlLoss,
    MSMLoss,
    NpairsLoss,
    PairwiseCosface,
    SupConLoss,
    TriHardLoss,
    TripletLoss,
    TripletLossV2,
)

PK_LOSSES = [EmlLoss, MSMLoss, PairwiseCosface, SupConLoss, TriHardLoss, TripletLoss, TripletLossV2]
NOT_PK = {"all-distinct": [0, 1, 2, 3, 4, 5], "all-equal": [7, 7, 7, 7, 7, 7], "singletons": [0, 0, 1, 1, 2, 3]}
# N-pairs needs exactly two images per class: a K = 3 batch or a single class is refused too.
NOT_P_X_2 = dict(NOT_PK, k3=[0, 0, 0, 1, 1, 1], **{"one-class": [4, 4]})


def _features(n):
    return paddle.to_tensor(np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32))


@pytest.mark.parametrize("labels", list(NOT_PK.values()), ids=list(NOT_PK))
@pytest.mark.parametrize("loss_class", PK_LOSSES, ids=[c.__name__ for c in PK_LOSSES])
def test_needs_pk_batches(loss_class, labels):
    with pytest.raises(ConfigError, match=rf"^{loss_class.__name__} needs P x K.*samples_per_class"):
        loss_class()(_features(len(labels)), paddle.to_tensor(labels))


@pytest.mark.parametrize("labels", list(NOT_P_X_2.values()), ids=list(NOT_P_X_2))
def test_npairs_needs_p_x_2_batches(labels):
    with pytest.raises(ConfigError, match=r"^NpairsLoss needs P x K.*K = 2.*samples_per_class=2"):
        NpairsLoss()(_features(len(labels)), paddle.to_tensor(labels))


@pytest.mark.parametrize("loss_class", PK_LOSSES + [NpairsLoss], ids=[c.__name__ for c in PK_LOSSES + [NpairsLoss]])
def test_accepts_a_pk_batch(loss_class):
    labels = [0, 0, 1, 1, 2, 2]  # P = 3, K = 2: what every one of them takes
    value = loss_class()(_features(6), paddle.to_tensor(labels))
    assert np.isfinite(float(value))
