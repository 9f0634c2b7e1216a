import numpy as np
import paddle
import pytest

import recog  # noqa: F401
from recog.losses import TriHardLoss


def _ordered_batch(p=5, k=2, d=16, seed=0):
    """P x K batch as the sampler yields it: K consecutive samples per class."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(rng.choice(100, size=p, replace=False), k).astype(np.int64)
    return rng.normal(size=(p * k, d)).astype(np.float32), labels


def _trihard_ref(features, k, margin):
    """float64, PaddleClas's batch-order formula: class blocks of k consecutive samples."""
    x = features.astype(np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sq = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    n = len(x)
    losses = []
    for i in range(n):
        block = np.arange(n) // k == i // k
        pos = block & (np.arange(n) != i)
        losses.append(max(sq[i, pos].max() + margin - sq[i, ~block].min(), 0.0))
    return float(np.mean(losses))


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("margin", [0.1, 0.6])
@pytest.mark.parametrize("label_shape", ["N", "N1"])
def test_matches_batch_order_formula(k, margin, label_shape):
    features, labels = _ordered_batch(k=k)
    lab = labels if label_shape == "N" else labels[:, None]
    loss = TriHardLoss(margin)(paddle.to_tensor(features), paddle.to_tensor(lab))
    assert loss.shape == []
    ref = _trihard_ref(features, k, margin)
    assert ref > 0.05
    assert abs(float(loss) - ref) / ref < 1e-5


def test_default_margin():
    assert TriHardLoss().margin == 0.1


def test_shuffled_batch_gives_the_ordered_value():
    features, labels = _ordered_batch(p=4, k=3, seed=1)
    perm = np.random.default_rng(2).permutation(len(labels))
    loss = TriHardLoss(0.3)(paddle.to_tensor(features[perm]), paddle.to_tensor(labels[perm]))
    ref = _trihard_ref(features, 3, 0.3)
    assert ref > 0.05 and abs(float(loss) - ref) / ref < 1e-5


def test_features_are_normalised():
    features, labels = _ordered_batch(seed=3)
    y = paddle.to_tensor(labels)
    a = float(TriHardLoss()(paddle.to_tensor(features), y))
    b = float(TriHardLoss()(paddle.to_tensor(features * 9.0), y))
    assert a > 0 and abs(a - b) < 1e-5


def test_gradients_flow():
    features, labels = _ordered_batch(p=4, k=3, seed=4)
    x = paddle.to_tensor(features, stop_gradient=False)
    TriHardLoss(margin=4.0)(x, paddle.to_tensor(labels)).backward()
    grad = x.grad.numpy()
    assert np.isfinite(grad).all()
    assert (np.abs(grad).sum(1) > 0).all()  # margin 4 (the largest squared distance) keeps all active
