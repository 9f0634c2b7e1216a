import numpy as np
import paddle
import pytest

import recog  # noqa: F401
from recog.losses import CELoss

N, C = 6, 5


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(N, C)).astype(np.float32)
    labels = rng.integers(0, C, size=N)
    return logits, labels


def _target(labels, epsilon):
    onehot = np.eye(C)[labels]
    return onehot if epsilon is None else (1 - epsilon) * onehot + epsilon / C


def _ce_ref(logits, labels, epsilon):
    """float64: mean_i -sum_c target_ic * log_softmax(logits)_ic."""
    x = logits.astype(np.float64)
    log_p = x - x.max(1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(1, keepdims=True))
    return float(-(_target(labels, epsilon) * log_p).sum(1).mean())


@pytest.mark.parametrize("epsilon", [None, 0.1, 0.4])
@pytest.mark.parametrize("label_shape", ["N", "N1"])
def test_matches_numpy(epsilon, label_shape):
    logits, labels = _inputs()
    lab = labels if label_shape == "N" else labels[:, None]
    loss = CELoss(epsilon)(paddle.to_tensor(logits), paddle.to_tensor(lab))
    assert loss.shape == []
    ref = _ce_ref(logits, labels, epsilon)
    assert abs(float(loss) - ref) / ref < 1e-5


def test_smoothing_changes_the_loss():
    logits, labels = _inputs()
    x, y = paddle.to_tensor(logits), paddle.to_tensor(labels)
    assert abs(float(CELoss()(x, y)) - float(CELoss(0.1)(x, y))) > 1e-3


def test_int32_labels():
    logits, labels = _inputs()
    loss = CELoss(0.1)(paddle.to_tensor(logits), paddle.to_tensor(labels.astype(np.int32)))
    assert abs(float(loss) - _ce_ref(logits, labels, 0.1)) / _ce_ref(logits, labels, 0.1) < 1e-5


@pytest.mark.parametrize("epsilon", [None, 0.2])
def test_gradient_is_softmax_minus_target(epsilon):
    logits, labels = _inputs(1)
    x = paddle.to_tensor(logits, stop_gradient=False)
    CELoss(epsilon)(x, paddle.to_tensor(labels)).backward()
    grad = x.grad.numpy()
    assert np.isfinite(grad).all() and np.abs(grad).max() > 0
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(grad, (p - _target(labels, epsilon)) / N, atol=1e-6)


@pytest.mark.parametrize("epsilon", [0.0, 1.0, -0.1, 1.5])
def test_epsilon_out_of_range(epsilon):
    with pytest.raises(ValueError, match=r"epsilon.*\(0, 1\)"):
        CELoss(epsilon)
