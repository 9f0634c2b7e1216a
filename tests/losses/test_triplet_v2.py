import numpy as np
import paddle
import pytest

import recog  # noqa: F401
from recog.losses import TripletLossV2


def _pk_batch(p=4, k=3, d=8, seed=0):
    """P x K batch in shuffled order: features [P*K, D] float32, labels [P*K] int64."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(rng.choice(100, size=p, replace=False), k))
    features = rng.normal(size=(p * k, d)).astype(np.float32)
    return features, labels.astype(np.int64)


def _triplet_ref(features, labels, margin, normalize):
    """float64 batch-hard triplet loss, one anchor at a time."""
    x = features.astype(np.float64)
    if normalize:
        x = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)
    dist = np.sqrt(np.maximum(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1), 1e-12))
    losses = []
    for i in range(len(x)):
        pos = (labels == labels[i]) & (np.arange(len(x)) != i)
        neg = labels != labels[i]
        losses.append(max(dist[i, pos].max() - dist[i, neg].min() + margin, 0.0))
    return float(np.mean(losses))


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("margin", [0.3, 0.5])
@pytest.mark.parametrize("label_shape", ["N", "N1"])
def test_matches_numpy(normalize, margin, label_shape):
    features, labels = _pk_batch()
    if not normalize:
        margin *= 4.0  # distances of unnormalised N(0, 1) features are ~4
    lab = labels if label_shape == "N" else labels[:, None]
    loss = TripletLossV2(margin, normalize)(paddle.to_tensor(features), paddle.to_tensor(lab))
    assert loss.shape == []
    ref = _triplet_ref(features, labels, margin, normalize)
    assert ref > 0.05
    assert abs(float(loss) - ref) / ref < 1e-5


def test_hand_checked_case():
    # Points on a line: class 0 at x=0, 1; class 1 at x=3, 5. margin 0.5:
    # anchor 0: relu(1-3+.5)=0, anchor 1: relu(1-2+.5)=0, anchor 2: relu(2-2+.5)=.5,
    # anchor 3: relu(2-4+.5)=0 -> loss 0.125. Only anchor 2 is active (pos = 3, neg = 1):
    # d loss / d x = 1/4 * (d|x3-x2| - d|x2-x1|) -> x0: 0, x1: +.25, x2: -.5, x3: +.25.
    x = paddle.to_tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [5.0, 0.0]], stop_gradient=False)
    loss = TripletLossV2(margin=0.5, normalize_feature=False)(x, paddle.to_tensor([0, 0, 1, 1]))
    assert abs(float(loss) - 0.125) < 1e-6
    loss.backward()
    expected = np.array([[0.0, 0.0], [0.25, 0.0], [-0.5, 0.0], [0.25, 0.0]])
    np.testing.assert_allclose(x.grad.numpy(), expected, atol=1e-6)


def test_normalisation_makes_it_scale_invariant():
    features, labels = _pk_batch(seed=1)
    y = paddle.to_tensor(labels)
    small, big = paddle.to_tensor(features), paddle.to_tensor(features * 7.0)
    normed = TripletLossV2(normalize_feature=True)
    assert abs(float(normed(small, y)) - float(normed(big, y))) < 1e-5
    raw = TripletLossV2(normalize_feature=False)
    assert abs(float(raw(small, y)) - float(raw(big, y))) > 1e-2


def test_batch_order_does_not_matter():
    features, labels = _pk_batch(seed=2)
    perm = np.random.default_rng(3).permutation(len(labels))
    loss_fn = TripletLossV2()
    a = float(loss_fn(paddle.to_tensor(features), paddle.to_tensor(labels)))
    b = float(loss_fn(paddle.to_tensor(features[perm]), paddle.to_tensor(labels[perm])))
    assert a > 0 and abs(a - b) < 1e-6


@pytest.mark.parametrize("normalize", [True, False])
def test_gradients_flow(normalize):
    features, labels = _pk_batch(seed=4)
    x = paddle.to_tensor(features, stop_gradient=False)
    TripletLossV2(margin=2.0, normalize_feature=normalize)(x, paddle.to_tensor(labels)).backward()
    grad = x.grad.numpy()
    assert np.isfinite(grad).all()
    assert (np.abs(grad).sum(1) > 0).all()  # margin 2 keeps every anchor active
