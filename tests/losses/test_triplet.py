import numpy as np
import paddle
import pytest

import recog  # noqa: F401
from recog.losses import TripletLoss, TripletLossV2


def _pk_batch(p=4, k=3, d=8, seed=0):
    """P x K batch in shuffled order: features [P*K, D] float32, labels [P*K] int64."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(rng.choice(100, size=p, replace=False), k))
    features = rng.normal(size=(p * k, d)).astype(np.float32)
    return features, labels.astype(np.int64)


def _triplet_ref(features, labels, margin):
    """float64 batch-hard triplet loss on raw features, one anchor at a time."""
    x = features.astype(np.float64)
    dist = np.sqrt(np.maximum(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1), 1e-12))
    losses = []
    for i in range(len(x)):
        pos = labels == labels[i]  # PaddleClas includes the anchor itself: d(i, i) is the minimum
        neg = labels != labels[i]
        losses.append(max(dist[i, pos].max() - dist[i, neg].min() + margin, 0.0))
    return float(np.mean(losses))


@pytest.mark.parametrize("margin", [1.0, 2.5])
@pytest.mark.parametrize("label_shape", ["N", "N1"])
def test_matches_numpy(margin, label_shape):
    features, labels = _pk_batch()
    lab = labels if label_shape == "N" else labels[:, None]
    loss = TripletLoss(margin)(paddle.to_tensor(features), paddle.to_tensor(lab))
    assert loss.shape == []
    ref = _triplet_ref(features, labels, margin)
    assert ref > 0.05
    assert abs(float(loss) - ref) / ref < 1e-5


def test_default_margin_and_no_normalisation():
    assert TripletLoss().margin == 1.0
    features, labels = _pk_batch(seed=1)
    x, y = paddle.to_tensor(features), paddle.to_tensor(labels)
    # Same as V2 without normalisation; not scale invariant.
    assert abs(float(TripletLoss(1.5)(x, y)) - float(TripletLossV2(1.5, normalize_feature=False)(x, y))) < 1e-6
    assert abs(float(TripletLoss()(x, y)) - float(TripletLoss()(x * 3.0, y))) > 1e-2


def test_batch_order_does_not_matter():
    features, labels = _pk_batch(seed=2)
    perm = np.random.default_rng(3).permutation(len(labels))
    loss_fn = TripletLoss()
    a = float(loss_fn(paddle.to_tensor(features), paddle.to_tensor(labels)))
    b = float(loss_fn(paddle.to_tensor(features[perm]), paddle.to_tensor(labels[perm])))
    assert a > 0 and abs(a - b) < 1e-6


def test_gradients_flow():
    features, labels = _pk_batch(seed=4)
    x = paddle.to_tensor(features, stop_gradient=False)
    TripletLoss(margin=5.0)(x, paddle.to_tensor(labels)).backward()
    grad = x.grad.numpy()
    assert np.isfinite(grad).all()
    assert (np.abs(grad).sum(1) > 0).all()  # margin 5 keeps every anchor active
