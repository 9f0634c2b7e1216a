import math

import numpy as np
import paddle
import pytest

import recog  # noqa: F401
from recog.losses import EmlLoss

BETA, THRESH = 100000.0, 20.0


def _ordered_batch(p=4, k=3, d=8, scale=1.0, seed=0):
    """P x K batch as the sampler yields it: K consecutive samples per class."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(rng.choice(100, size=p, replace=False), k).astype(np.int64)
    return (scale * rng.normal(size=(p * k, d))).astype(np.float32), labels


def _eml_batch_order_ref(features, k):
    """float64, PaddleClas's batch-order formula: row i's positives are the other members of its
    block of k, the rest are negatives; stable surrogate with threshold 20. Returns (loss, bias)."""
    x = features.astype(np.float64)
    n = len(x)
    dist = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    log1pb = math.log(1 + BETA)

    def surrogate(theta, bias):
        return np.log(1 + BETA * theta * np.exp(bias)) / log1pb

    losses, biases = [], []
    for i in range(n):
        block = np.arange(i // k * k, (i // k + 1) * k)
        pos = dist[i, [j for j in block if j != i]]
        neg = dist[i, [j for j in range(n) if j not in block]]
        pos_mean = np.exp(pos - pos.max()).mean()
        neg_mean = np.exp(neg.min() - neg).mean()
        bias, theta = pos.max() - neg.min(), pos_mean * neg_mean
        low, high = min(bias, THRESH), max(bias, THRESH)
        approx = (np.log(theta) + high + math.log(BETA)) / log1pb
        losses.append(surrogate(theta, low) + approx - surrogate(theta, THRESH))
        biases.append(bias)
    return float(np.mean(losses)), np.array(biases)


def _eml_masked_ref(features, labels):
    """float64 from the labels: log(1 + beta * mean_p e^{d_ip} * mean_n e^{-d_in}) / log(1 + beta)."""
    x = features.astype(np.float64)
    dist = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    out = []
    for i in range(len(x)):
        pos = (labels == labels[i]) & (np.arange(len(x)) != i)
        neg = labels != labels[i]
        theta_e_bias = np.exp(dist[i, pos]).mean() * np.exp(-dist[i, neg]).mean()
        out.append(np.log1p(BETA * theta_e_bias) / math.log1p(BETA))
    return float(np.mean(out))


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("label_shape", ["N", "N1"])
def test_matches_batch_order_formula(k, label_shape):
    features, labels = _ordered_batch(k=k, scale=0.5)
    lab = labels if label_shape == "N" else labels[:, None]
    loss = EmlLoss()(paddle.to_tensor(features), paddle.to_tensor(lab))
    assert loss.shape == []
    ref, bias = _eml_batch_order_ref(features, k)
    assert (bias <= THRESH).all() and ref > 0.1
    assert abs(float(loss) - ref) / ref < 1e-5


def test_matches_both_branches_of_the_stable_surrogate():
    # Large distances: some anchors have bias > 20 (the linear branch), some not.
    features, labels = _ordered_batch(p=4, k=3, d=8, scale=2.0, seed=5)
    ref, bias = _eml_batch_order_ref(features, 3)
    assert (bias > THRESH).any() and (bias <= THRESH).any()
    loss = EmlLoss()(paddle.to_tensor(features), paddle.to_tensor(labels))
    assert abs(float(loss) - ref) / ref < 1e-5


def test_batch_order_does_not_matter():
    features, labels = _ordered_batch(seed=2)
    perm = np.random.default_rng(3).permutation(len(labels))
    loss_fn = EmlLoss()
    a = float(loss_fn(paddle.to_tensor(features), paddle.to_tensor(labels)))
    b = float(loss_fn(paddle.to_tensor(features[perm]), paddle.to_tensor(labels[perm])))
    assert a > 0.1 and abs(a - b) / a < 1e-6


def test_uneven_class_counts_follow_the_labels():
    rng = np.random.default_rng(7)
    labels = rng.permutation(np.array([3, 3, 3, 8, 8, 5, 5, 5, 5]))
    features = (0.5 * rng.normal(size=(9, 6))).astype(np.float32)
    loss = EmlLoss()(paddle.to_tensor(features), paddle.to_tensor(labels))
    ref = _eml_masked_ref(features, labels)
    assert abs(float(loss) - ref) / ref < 1e-5


def test_beta_changes_the_loss():
    features, labels = _ordered_batch(seed=4, scale=0.5)
    x, y = paddle.to_tensor(features), paddle.to_tensor(labels)
    assert abs(float(EmlLoss(10.0)(x, y)) - float(EmlLoss()(x, y))) > 1e-2
    with pytest.raises(ValueError, match="beta"):
        EmlLoss(0.0)


def test_gradients_flow_and_match_finite_differences():
    features, labels = _ordered_batch(p=3, k=2, d=4, scale=0.5, seed=6)
    x = paddle.to_tensor(features, stop_gradient=False)
    EmlLoss()(x, paddle.to_tensor(labels)).backward()
    grad = x.grad.numpy()
    assert np.isfinite(grad).all() and (np.abs(grad).sum(1) > 0).all()
    f64, eps, num = features.astype(np.float64), 1e-6, np.zeros(features.shape)
    for idx in np.ndindex(*features.shape):
        plus, minus = f64.copy(), f64.copy()
        plus[idx] += eps
        minus[idx] -= eps
        num[idx] = (_eml_masked_ref(plus, labels) - _eml_masked_ref(minus, labels)) / (2 * eps)
    assert np.abs(grad - num).max() < 1e-3 * np.abs(num).max()
