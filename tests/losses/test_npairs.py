import numpy as np
import paddle
import pytest

import recog  # noqa: F401
from recog.losses import NpairsLoss


def _ordered_batch(p=6, d=8, seed=0):
    """P x 2 batch as the sampler yields it: anchor then positive of each class."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(rng.choice(100, size=p, replace=False), 2).astype(np.int64)
    return rng.normal(scale=0.7, size=(2 * p, d)).astype(np.float32), labels


def _npairs_ref(features, reg_lambda):
    """float64, PaddleClas's batch-order formula: rows 2c / 2c+1 are anchor / positive of class c."""
    x = features.astype(np.float64)
    anchors, positives = x[0::2], x[1::2]
    sim = anchors @ positives.T
    m = sim.max(1, keepdims=True)
    log_softmax = sim - m - np.log(np.exp(sim - m).sum(1, keepdims=True))
    xent = -np.diag(log_softmax).mean()
    return float(xent + 0.5 * reg_lambda * (x**2).sum(1).mean())


@pytest.mark.parametrize("reg_lambda", [0.0, 0.01, 0.5])
@pytest.mark.parametrize("label_shape", ["N", "N1"])
def test_matches_batch_order_formula(reg_lambda, label_shape):
    features, labels = _ordered_batch()
    lab = labels if label_shape == "N" else labels[:, None]
    loss = NpairsLoss(reg_lambda)(paddle.to_tensor(features), paddle.to_tensor(lab))
    assert loss.shape == []
    ref = _npairs_ref(features, reg_lambda)
    assert ref > 0.05
    assert abs(float(loss) - ref) / ref < 1e-5


def test_default_reg_lambda():
    assert NpairsLoss().reg_lambda == 0.01


def test_class_order_does_not_matter_but_roles_do():
    features, labels = _ordered_batch(seed=1)
    ref = _npairs_ref(features, 0.01)
    # Shuffle the classes and interleave them, keeping anchor before positive within each class.
    p = len(labels) // 2
    classes = np.random.default_rng(2).permutation(p)
    perm = np.concatenate([2 * classes, 2 * classes + 1])
    loss_fn = NpairsLoss()
    moved = float(loss_fn(paddle.to_tensor(features[perm]), paddle.to_tensor(labels[perm])))
    assert abs(moved - ref) / ref < 1e-5
    # Swapping a class's anchor and positive changes the value (the loss is asymmetric).
    swap = np.arange(len(labels))
    swap[[0, 1]] = [1, 0]
    swapped = float(loss_fn(paddle.to_tensor(features[swap]), paddle.to_tensor(labels[swap])))
    assert abs(swapped - ref) > 1e-4


def test_gradients_flow():
    features, labels = _ordered_batch(seed=3)
    x = paddle.to_tensor(features, stop_gradient=False)
    NpairsLoss()(x, paddle.to_tensor(labels)).backward()
    grad = x.grad.numpy()
    assert np.isfinite(grad).all()
    assert (np.abs(grad).sum(1) > 0).all()
