"""TripletAngularMarginLoss against a NumPy float64 reference of PaddleClas's formula.

The PaddleClas 2.6.0 wheel in .venv/oracles ships no ``ppcls/loss`` package, so the reference is
written from the formula of PaddleClas's ``tripletangularmarginloss.py`` (PaddleClas release/2.6),
including its ``else 1`` for an inactive negative bound (see the class docstring)."""

import numpy as np
import paddle
import pytest

import recog  # noqa: F401
from recog.errors import ConfigError
from recog.losses.triplet_angular import TripletAngularMarginLoss


def _batch(p=4, k=3, d=16, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(rng.choice(50, size=p, replace=False), k).astype(np.int64)
    centres = rng.normal(size=(p, d))
    x = np.repeat(centres, k, axis=0) * scale + rng.normal(size=(p * k, d))
    return x.astype(np.float32), labels


def reference(x, labels, margin=0.5, normalize=True, add_absolute=False, weight=1.0, ap_value=0.9, an_value=0.5):
    x = x.astype(np.float64)
    if normalize:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    same = labels[:, None] == labels[None, :]
    s_ap = np.where(same, sim, np.inf).min(1)  # anchor included
    s_an = np.where(~same, sim, -np.inf).max(1)
    loss = np.maximum(s_an - s_ap + margin, 0).mean()
    if add_absolute:
        an_term = np.where(s_an - an_value > 0, s_an - an_value, 1.0)
        loss += weight * (np.maximum(ap_value - s_ap, 0).mean() + an_term.mean())
    return float(loss)


PARAMS = [
    {},
    {"margin": 0.2},
    {"add_absolute": True, "absolute_loss_weight": 0.1, "ap_value": 0.8, "an_value": 0.4},  # PP-ShiTuV2's
    {"add_absolute": True, "ap_value": 0.95, "an_value": -0.2},
    {"normalize_feature": False, "margin": 1.0},
]


@pytest.mark.parametrize("params", PARAMS)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_reference(params, seed):
    x, labels = _batch(seed=seed, scale=0.7)
    loss = TripletAngularMarginLoss(**params)(paddle.to_tensor(x), paddle.to_tensor(labels))
    assert loss.shape == []
    ref = reference(
        x,
        labels,
        params.get("margin", 0.5),
        params.get("normalize_feature", True),
        params.get("add_absolute", False),
        params.get("absolute_loss_weight", 1.0),
        params.get("ap_value", 0.9),
        params.get("an_value", 0.5),
    )
    assert ref > 0.05
    assert abs(float(loss) - ref) / ref < 1e-5


def test_inactive_negative_bound_counts_one_as_paddleclas():
    """Well separated classes: every s_an is under an_value, so each anchor adds 1 (times the weight)."""
    x, labels = _batch(p=3, k=2, d=32, scale=30.0, seed=2)
    base = float(TripletAngularMarginLoss(margin=0.5)(paddle.to_tensor(x), paddle.to_tensor(labels)))
    with_abs = float(
        TripletAngularMarginLoss(margin=0.5, add_absolute=True, absolute_loss_weight=0.1, ap_value=0.0, an_value=0.99)(
            paddle.to_tensor(x), paddle.to_tensor(labels)
        )
    )
    assert abs(with_abs - (base + 0.1 * 1.0)) < 1e-6


def test_defaults_are_paddleclas():
    loss = TripletAngularMarginLoss()
    assert (
        loss.margin,
        loss.normalize_feature,
        loss.add_absolute,
        loss.absolute_loss_weight,
        loss.ap_value,
        loss.an_value,
    ) == (0.5, True, False, 1.0, 0.9, 0.5)


def test_batch_order_and_label_shape_do_not_matter():
    x, labels = _batch(p=5, k=2, seed=3)
    perm = np.random.default_rng(4).permutation(len(labels))
    fn = TripletAngularMarginLoss(add_absolute=True)
    a = float(fn(paddle.to_tensor(x), paddle.to_tensor(labels)))
    b = float(fn(paddle.to_tensor(x[perm]), paddle.to_tensor(labels[perm][:, None])))
    assert a > 0 and abs(a - b) < 1e-6


def test_gradients_flow():
    x, labels = _batch(seed=5)
    features = paddle.to_tensor(x, stop_gradient=False)
    TripletAngularMarginLoss(margin=2.0, add_absolute=True)(features, paddle.to_tensor(labels)).backward()
    grad = features.grad.numpy()
    assert np.isfinite(grad).all() and (np.abs(grad).sum(1) > 0).sum() >= len(labels) // 2


def test_needs_pk_batches():
    x = paddle.to_tensor(np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32))
    with pytest.raises(ConfigError, match="P x K"):
        TripletAngularMarginLoss()(x, paddle.to_tensor(np.array([0, 1, 2, 3])))
