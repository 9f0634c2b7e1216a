import numpy as np
import paddle
import pytest

import recog  # noqa: F401
from recog.losses import MSMLoss


def _ordered_batch(p=5, k=2, d=16, seed=0):
    """P x K batch as the sampler yields it: K consecutive samples per class."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(rng.choice(100, size=p, replace=False), k).astype(np.int64)
    return rng.normal(size=(p * k, d)).astype(np.float32), labels


def _msm_ref(features, k, margin):
    """float64, PaddleClas's batch-order formula: hardest in-block pair vs hardest cross-block pair."""
    x = features.astype(np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sq = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    block = np.arange(len(x)) // k
    same = block[:, None] == block[None, :]
    pos = same & ~np.eye(len(x), dtype=bool)
    return float(max(sq[pos].max() + margin - sq[~same].min(), 0.0))


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("margin", [0.1, 0.5])
@pytest.mark.parametrize("label_shape", ["N", "N1"])
def test_matches_batch_order_formula(k, margin, label_shape):
    features, labels = _ordered_batch(k=k)
    lab = labels if label_shape == "N" else labels[:, None]
    loss = MSMLoss(margin)(paddle.to_tensor(features), paddle.to_tensor(lab))
    assert loss.shape == []
    ref = _msm_ref(features, k, margin)
    assert ref > 0.05
    assert abs(float(loss) - ref) / ref < 1e-5


def test_default_margin():
    assert MSMLoss().margin == 0.1


def test_one_hinge_for_the_batch_not_a_mean():
    # Unit vectors on a circle: class 0 at 0 and 90 degrees (sq dist 2), class 1 at 180 and 200
    # degrees (sq dist ~0.121); closest cross pair 90 vs 180 degrees (sq dist 2). -> relu(2 + .1 - 2).
    angles = np.deg2rad([0.0, 90.0, 180.0, 200.0])
    x = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)
    loss = MSMLoss(0.1)(paddle.to_tensor(x), paddle.to_tensor([0, 0, 1, 1]))
    assert abs(float(loss) - 0.1) < 1e-5


def test_shuffled_batch_gives_the_ordered_value():
    features, labels = _ordered_batch(p=4, k=3, seed=1)
    perm = np.random.default_rng(2).permutation(len(labels))
    loss = MSMLoss(0.3)(paddle.to_tensor(features[perm]), paddle.to_tensor(labels[perm]))
    ref = _msm_ref(features, 3, 0.3)
    assert ref > 0.05 and abs(float(loss) - ref) / ref < 1e-5


def test_gradients_reach_only_the_two_hardest_pairs():
    features, labels = _ordered_batch(p=4, k=3, seed=4)
    x = paddle.to_tensor(features, stop_gradient=False)
    loss = MSMLoss(margin=1.0)(x, paddle.to_tensor(labels))
    assert float(loss) > 0
    loss.backward()
    grad = x.grad.numpy()
    assert np.isfinite(grad).all()
    active = int((np.abs(grad).sum(1) > 0).sum())
    assert 2 <= active <= 4
