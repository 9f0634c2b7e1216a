import numpy as np
import paddle
import pytest

import recog  # noqa: F401
from recog.losses import PairwiseCosface


def _pk_batch(p=4, k=3, d=8, seed=0):
    """P x K batch in shuffled order: features [P*K, D] float32, labels [P*K] int64."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(rng.choice(100, size=p, replace=False), k))
    return rng.normal(size=(p * k, d)).astype(np.float32), labels.astype(np.int64)


def _logsumexp(v):
    return v.max() + np.log(np.exp(v - v.max()).sum())


def _cosface_ref(features, labels, margin, gamma):
    """float64: mean_i log(1 + sum_{p, n} exp(gamma (s_in - s_ip + margin))), pair by pair."""
    x = features.astype(np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    out = []
    for i in range(len(x)):
        pos = (labels == labels[i]) & (np.arange(len(x)) != i)
        neg = labels != labels[i]
        exponents = gamma * (sim[i, neg][None, :] - sim[i, pos][:, None] + margin)  # [P, N]
        out.append(np.logaddexp(0.0, _logsumexp(exponents.ravel())))
    return float(np.mean(out))


@pytest.mark.parametrize("margin,gamma", [(0.35, 64.0), (0.2, 16.0), (0.0, 1.0)])
@pytest.mark.parametrize("label_shape", ["N", "N1"])
def test_matches_numpy(margin, gamma, label_shape):
    features, labels = _pk_batch()
    lab = labels if label_shape == "N" else labels[:, None]
    loss = PairwiseCosface(margin, gamma)(paddle.to_tensor(features), paddle.to_tensor(lab))
    assert loss.shape == []
    ref = _cosface_ref(features, labels, margin, gamma)
    assert ref > 0.05
    assert abs(float(loss) - ref) / ref < 1e-5


def test_defaults_and_scale_invariance():
    features, labels = _pk_batch(seed=1)
    loss_fn = PairwiseCosface()
    assert (loss_fn.margin, loss_fn.gamma) == (0.35, 64.0)
    y = paddle.to_tensor(labels)
    a = float(loss_fn(paddle.to_tensor(features), y))
    b = float(loss_fn(paddle.to_tensor(features * 5.0), y))
    assert abs(a - _cosface_ref(features, labels, 0.35, 64.0)) / a < 1e-5
    assert abs(a - b) / a < 1e-5


def test_well_separated_classes_give_a_small_loss():
    # Two classes on orthogonal axes: each anchor has s_p = 1 once and s_n = 0 twice
    # -> log(1 + 2 * exp(gamma * (m - 1))).
    x = paddle.to_tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    loss = PairwiseCosface(margin=0.35, gamma=8.0)(x, paddle.to_tensor([0, 0, 1, 1]))
    assert abs(float(loss) - np.log1p(2.0 * np.exp(8.0 * (0.35 - 1.0)))) < 1e-6


def test_gradients_flow():
    features, labels = _pk_batch(seed=4)
    x = paddle.to_tensor(features, stop_gradient=False)
    PairwiseCosface(margin=0.35, gamma=16.0)(x, paddle.to_tensor(labels)).backward()
    grad = x.grad.numpy()
    assert np.isfinite(grad).all() and (np.abs(grad).sum(1) > 0).all()
    # Normalisation makes the loss scale invariant: the gradient is orthogonal to each feature.
    assert np.abs((grad * features).sum(1)).max() < 1e-5 * np.abs(grad).max() * np.abs(features).max()
