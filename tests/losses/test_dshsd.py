import numpy as np
import paddle
import pytest

import recog  # noqa: F401
from recog.losses import CELoss, DSHSDLoss

N, K, C = 12, 8, 4


def _codes(seed=0):
    rng = np.random.default_rng(seed)
    return np.tanh(rng.normal(size=(N, K))).astype(np.float32), rng.integers(0, C, size=N)


def _pairwise_ref(u, label_matrix, alpha):
    """float64, PaddleClas's Ld: label_matrix [N, C] one- or multi-hot; s = 1 for dissimilar."""
    u = u.astype(np.float64)
    dist = ((u[:, None, :] - u[None, :, :]) ** 2).sum(-1)
    s = (label_matrix @ label_matrix.T == 0).astype(np.float64)
    margin = 2 * u.shape[1]
    ld = (1 - s) / 2 * dist + s / 2 * np.maximum(margin - dist, 0)
    return alpha * float(ld.mean()), s, dist


@pytest.mark.parametrize("alpha", [0.05, 1.0])
@pytest.mark.parametrize("label_shape", ["N", "N1"])
def test_matches_numpy(alpha, label_shape):
    u, labels = _codes()
    lab = labels if label_shape == "N" else labels[:, None]
    loss = DSHSDLoss(alpha)(paddle.to_tensor(u), paddle.to_tensor(lab))
    assert loss.shape == []
    ref, s, dist = _pairwise_ref(u, np.eye(C)[labels], alpha)
    assert (dist[s == 1] < 2 * K).any() and (s == 0).sum() > N  # both terms are active
    assert abs(float(loss) - ref) / ref < 1e-5


def test_multi_hot_labels():
    u, _ = _codes(seed=1)
    multi_hot = (np.random.default_rng(2).random((N, C)) < 0.3).astype(np.float32)
    loss = DSHSDLoss(0.05, multi_label=True)(paddle.to_tensor(u), paddle.to_tensor(multi_hot))
    ref, s, _ = _pairwise_ref(u, multi_hot, 0.05)
    single, _, _ = _pairwise_ref(u, np.eye(C)[multi_hot.argmax(1)], 0.05)
    assert abs(float(loss) - ref) / ref < 1e-5 and abs(ref - single) > 1e-3
    with pytest.raises(ValueError, match="multi-hot"):
        DSHSDLoss(multi_label=True)(paddle.to_tensor(u), paddle.to_tensor(np.zeros(N, np.int64)))


def test_ce_on_logits_plus_dshsd_is_paddleclas_objective():
    # PaddleClas: Lc (softmax CE on logits) + alpha * Ld, single-label.
    u, labels = _codes(seed=3)
    logits = np.random.default_rng(4).normal(size=(N, C))
    log_p = logits - logits.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    lc = float(-(np.eye(C)[labels] * log_p).sum(1).mean())
    full_ref = lc + _pairwise_ref(u, np.eye(C)[labels], 0.05)[0]
    y = paddle.to_tensor(labels)
    ours = CELoss()(paddle.to_tensor(logits.astype(np.float32)), y) + DSHSDLoss(0.05)(paddle.to_tensor(u), y)
    assert abs(float(ours) - full_ref) / full_ref < 1e-5


def test_gradients_flow():
    u, labels = _codes(seed=5)
    x = paddle.to_tensor(u, stop_gradient=False)
    DSHSDLoss(0.05)(x, paddle.to_tensor(labels)).backward()
    grad = x.grad.numpy()
    assert np.isfinite(grad).all() and (np.abs(grad).sum(1) > 0).all()
