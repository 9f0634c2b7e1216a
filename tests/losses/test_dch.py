import numpy as np
import paddle
import pytest

import recog  # noqa: F401
from recog.losses import DCHLoss

N, K, C = 12, 16, 4


def _codes(seed=0, n=N, classes=C):
    """tanh-neck outputs [N, K] float32 and random class ids (any batch, not P x K)."""
    rng = np.random.default_rng(seed)
    return np.tanh(rng.normal(size=(n, K))).astype(np.float32), rng.integers(0, classes, size=n)


def _dch_ref(u, labels, gamma, lam, n_class=C):
    """float64, PaddleClas's DCHLoss: one-hot similarity, balanced weights, Cauchy losses."""
    u = u.astype(np.float64)
    y = np.eye(n_class)[labels]
    s = y @ y.T
    if (1 - s).sum() != 0 and s.sum() != 0:
        w = s * s.size / s.sum() + (1 - s) * s.size / (1 - s).sum()
    else:
        w = np.ones_like(s)

    def d(hi, hj):
        norm = np.linalg.norm(hi, axis=1)[:, None] * np.linalg.norm(hj, axis=1)[None, :]
        cos = hi @ hj.T / np.maximum(norm, 1e-4)
        return (1 - np.minimum(cos, 0.99)) * hi.shape[1] / 2

    dist = d(u, u)
    cauchy = w * (s * np.log(dist / gamma) + np.log(1 + gamma / dist))
    quantization = np.log(1 + d(np.abs(u), np.ones_like(u)) / gamma)  # [N, N], like PaddleClas
    return float(cauchy.mean() + lam * quantization.mean())


@pytest.mark.parametrize("gamma,lam", [(20.0, 0.1), (5.0, 1.0)])
@pytest.mark.parametrize("label_shape", ["N", "N1"])
def test_matches_numpy(gamma, lam, label_shape):
    u, labels = _codes()
    lab = labels if label_shape == "N" else labels[:, None]
    loss = DCHLoss(gamma, lam, class_num=C)(paddle.to_tensor(u), paddle.to_tensor(lab))
    assert loss.shape == []
    ref = _dch_ref(u, labels, gamma, lam)
    assert abs(float(loss) - ref) / ref < 1e-5


def test_single_class_batch_uses_unit_weights():
    u, _ = _codes(seed=1)
    labels = np.full(N, 2)
    loss = DCHLoss()(paddle.to_tensor(u), paddle.to_tensor(labels))
    ref = _dch_ref(u, labels, 20.0, 0.1)
    assert abs(float(loss) - ref) / ref < 1e-5


def test_quantization_term_prefers_binary_codes():
    # Perfect +-1 codes: d(|b|, 1) = K/2 * (1 - .99) for every row (cos 1, clipped at .99).
    u, labels = _codes(seed=2)
    binary = np.sign(u)
    x, y = paddle.to_tensor(binary), paddle.to_tensor(labels)
    only_pairs = float(DCHLoss(_lambda=0.0)(x, y))
    with_quant = float(DCHLoss(_lambda=1.0)(x, y))
    assert abs(with_quant - only_pairs - np.log(1 + K / 2 * 0.01 / 20.0)) < 1e-6
    relaxed = paddle.to_tensor(u)
    quant_relaxed = float(DCHLoss(_lambda=1.0)(relaxed, y)) - float(DCHLoss(_lambda=0.0)(relaxed, y))
    assert quant_relaxed > with_quant - only_pairs + 1e-2


def test_gradients_flow():
    u, labels = _codes(seed=3)
    x = paddle.to_tensor(u, stop_gradient=False)
    DCHLoss(class_num=C)(x, paddle.to_tensor(labels)).backward()
    grad = x.grad.numpy()
    assert np.isfinite(grad).all() and (np.abs(grad).sum(1) > 0).all()


def test_labels_checked_against_class_num():
    u, labels = _codes()
    with pytest.raises(ValueError, match=r"class_num=3"):
        DCHLoss(class_num=3)(paddle.to_tensor(u), paddle.to_tensor(np.maximum(labels, 3)))
