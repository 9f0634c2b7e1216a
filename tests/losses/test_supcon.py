import numpy as np
import paddle
import pytest

import recog  # noqa: F401
from recog.losses import SupConLoss


def _ordered_batch(p=4, k=3, d=16, seed=0):
    """P x K batch as the sampler yields it: K consecutive samples per class."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(rng.choice(100, size=p, replace=False), k).astype(np.int64)
    return rng.normal(size=(p * k, d)).astype(np.float32), labels


def _supcon_multiview_ref(features, labels, k, temperature, base_temperature):
    """float64 SupCon L_out as PaddleClas computes it with views=k: [P, k, D], one label per row."""
    x = features.astype(np.float64)
    x = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)
    views = x.reshape(-1, k, x.shape[1])  # [P, k, D]
    ids = labels.reshape(-1, k)[:, 0]
    contrast = np.concatenate([views[:, v] for v in range(k)], 0)  # view-major [k*P, D]
    id_of = np.tile(ids, k)
    z = contrast @ contrast.T / temperature
    n = len(z)
    total = 0.0
    for i in range(n):
        others = np.arange(n) != i
        log_denominator = np.log(np.exp(z[i, others]).sum())
        pos = others & (id_of == id_of[i])
        total += -(temperature / base_temperature) * (z[i, pos] - log_denominator).mean()
    return total / n


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("temperature,base_temperature", [(0.07, 0.07), (0.5, 0.07), (0.1, 0.2)])
@pytest.mark.parametrize("label_shape", ["N", "N1"])
def test_matches_paddleclas_views(k, temperature, base_temperature, label_shape):
    features, labels = _ordered_batch(k=k)
    lab = labels if label_shape == "N" else labels[:, None]
    loss = SupConLoss(temperature, base_temperature)(paddle.to_tensor(features), paddle.to_tensor(lab))
    assert loss.shape == []
    ref = _supcon_multiview_ref(features, labels, k, temperature, base_temperature)
    assert ref > 0.05
    assert abs(float(loss) - ref) / ref < 1e-5


def test_defaults_and_modes():
    loss_fn = SupConLoss()
    assert (loss_fn.temperature, loss_fn.base_temperature, loss_fn.contrast_mode) == (0.07, 0.07, "all")
    features, labels = _ordered_batch(seed=1)
    x, y = paddle.to_tensor(features), paddle.to_tensor(labels)
    a = float(SupConLoss(contrast_mode="all")(x, y))
    assert abs(a - float(SupConLoss(contrast_mode="one")(x, y))) < 1e-6  # one view: same anchors
    # temperature / base_temperature scales the loss linearly.
    assert abs(float(SupConLoss(0.07, 0.14)(x, y)) - 0.5 * a) < 1e-5
    with pytest.raises(ValueError, match="contrast_mode"):
        SupConLoss(contrast_mode="both")


def test_batch_order_and_scale_do_not_matter():
    features, labels = _ordered_batch(seed=2)
    perm = np.random.default_rng(3).permutation(len(labels))
    loss_fn = SupConLoss()
    a = float(loss_fn(paddle.to_tensor(features), paddle.to_tensor(labels)))
    b = float(loss_fn(paddle.to_tensor(features[perm]), paddle.to_tensor(labels[perm])))
    c = float(loss_fn(paddle.to_tensor(features * 5.0), paddle.to_tensor(labels)))
    assert a > 0 and abs(a - b) / a < 1e-6 and abs(a - c) / a < 1e-6


def test_gradients_flow():
    features, labels = _ordered_batch(seed=4)
    x = paddle.to_tensor(features, stop_gradient=False)
    SupConLoss()(x, paddle.to_tensor(labels)).backward()
    grad = x.grad.numpy()
    assert np.isfinite(grad).all()
    assert (np.abs(grad).sum(1) > 0).all()
