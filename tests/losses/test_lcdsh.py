import numpy as np
import paddle
import pytest

import recog  # noqa: F401
from recog.losses import LCDSHLoss

N, K, C = 10, 12, 3


def _codes(seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return np.tanh(rng.normal(size=(N, K))).astype(np.float32) * scale, rng.integers(0, C, size=N)


def _sigmoid(v):
    return 1 / (1 + np.exp(-v))


def _lcdsh_ref(u, labels, lam, n_class=C):
    """float64, PaddleClas's LCDSHLoss."""
    u = u.astype(np.float64)
    y = np.eye(n_class)[labels]
    s = 2 * (y @ y.T > 0) - 1.0
    theta = np.clip(0.5 * u @ u.T, -50, 50)
    l1 = np.log(1 + np.exp(-s * theta)).mean()
    b = np.sign(u)
    l2 = ((_sigmoid(theta) - _sigmoid(0.5 * b @ b.T)) ** 2).mean()
    return float(l1 + lam * l2)


@pytest.mark.parametrize("lam", [3.0, 0.5])
@pytest.mark.parametrize("label_shape", ["N", "N1"])
def test_matches_numpy(lam, label_shape):
    u, labels = _codes()
    lab = labels if label_shape == "N" else labels[:, None]
    loss = LCDSHLoss(class_num=C, _lambda=lam)(paddle.to_tensor(u), paddle.to_tensor(lab))
    assert loss.shape == []
    ref = _lcdsh_ref(u, labels, lam)
    assert abs(float(loss) - ref) / ref < 1e-5
    assert abs(ref - _lcdsh_ref(u, labels, 0.0)) > 1e-3  # the consistency term is not negligible


def test_inner_products_are_clipped_at_50():
    u, labels = _codes(seed=1, scale=6.0)  # |<u_i, u_i>| / 2 up to 18 * 12 = 216
    assert (np.abs(0.5 * u.astype(np.float64) @ u.T) > 50).any()
    loss = LCDSHLoss(_lambda=3.0)(paddle.to_tensor(u), paddle.to_tensor(labels))
    ref = _lcdsh_ref(u, labels, 3.0)
    assert abs(float(loss) - ref) / ref < 1e-5


def test_gradients_match_finite_differences():
    # sign(u) is a constant of u almost everywhere: the finite differences of the reference
    # are the gradient with the binary codes detached.
    u, labels = _codes(seed=2)
    x = paddle.to_tensor(u, stop_gradient=False)
    LCDSHLoss(_lambda=3.0)(x, paddle.to_tensor(labels)).backward()
    grad = x.grad.numpy()
    assert np.isfinite(grad).all() and (np.abs(grad).sum(1) > 0).all()
    f64, eps, num = u.astype(np.float64), 1e-6, np.zeros(u.shape)
    for idx in np.ndindex(*u.shape):
        plus, minus = f64.copy(), f64.copy()
        plus[idx] += eps
        minus[idx] -= eps
        num[idx] = (_lcdsh_ref(plus, labels, 3.0) - _lcdsh_ref(minus, labels, 3.0)) / (2 * eps)
    assert np.abs(grad - num).max() < 1e-3 * np.abs(num).max()


def test_labels_checked_against_class_num():
    u, _ = _codes()
    with pytest.raises(ValueError, match=r"class_num=2"):
        LCDSHLoss(class_num=2)(paddle.to_tensor(u), paddle.to_tensor(np.arange(N) % 3))
