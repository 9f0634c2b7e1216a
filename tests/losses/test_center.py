import numpy as np
import paddle
import pytest

import recog  # noqa: F401
from recog.errors import ConfigError
from recog.losses import CenterLoss

N, C, D = 10, 6, 8


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(N, D)).astype(np.float32), rng.integers(0, C, size=N).astype(np.int64)


def _center_ref(features, labels, centers):
    """float64, PaddleClas's formula: masked [N, C] squared-distance matrix, clipped, summed / N."""
    x, c = features.astype(np.float64), centers.astype(np.float64)
    distmat = (x**2).sum(1)[:, None] + (c**2).sum(1)[None, :] - 2.0 * x @ c.T
    mask = labels[:, None] == np.arange(len(c))[None, :]
    return float(np.clip(distmat * mask, 1e-12, 1e12).sum() / len(x))


@pytest.mark.parametrize("label_shape", ["N", "N1"])
def test_matches_numpy(label_shape):
    paddle.seed(0)
    loss_fn = CenterLoss(C, D)
    features, labels = _inputs()
    lab = labels if label_shape == "N" else labels[:, None]
    loss = loss_fn(paddle.to_tensor(features), paddle.to_tensor(lab))
    assert loss.shape == []
    ref = _center_ref(features, labels, loss_fn.centers.numpy())
    assert ref > 1.0
    assert abs(float(loss) - ref) / ref < 1e-5


def test_centers_are_a_learnable_parameter():
    paddle.seed(1)
    loss_fn = CenterLoss(C, D)
    params = loss_fn.parameters()
    assert len(params) == 1 and params[0].shape == [C, D] and not params[0].stop_gradient
    assert 0.5 < float(params[0].numpy().std()) < 1.5  # N(0, 1) initialisation
    features, labels = _inputs(1)
    x, y = paddle.to_tensor(features), paddle.to_tensor(labels)
    # Gradient descent on the centres alone converges to the class means, where the loss is the
    # mean within-class squared spread.
    present = np.unique(labels)
    means = np.stack([features[labels == c].astype(np.float64).mean(0) for c in present])
    floor = float(((features - means[np.searchsorted(present, labels)]) ** 2).sum(1).mean())
    assert float(loss_fn(x, y)) > floor + 1.0
    opt = paddle.optimizer.SGD(learning_rate=0.5, parameters=params)
    for _ in range(60):
        loss_fn(x, y).backward()
        opt.step()
        opt.clear_grad()
    np.testing.assert_allclose(loss_fn.centers.numpy()[present], means, atol=1e-2)
    assert abs(float(loss_fn(x, y)) - floor) / floor < 1e-3


def test_gradients():
    paddle.seed(2)
    loss_fn = CenterLoss(C, D)
    features, labels = _inputs(2)
    x = paddle.to_tensor(features, stop_gradient=False)
    loss_fn(x, paddle.to_tensor(labels)).backward()
    centers = loss_fn.centers.numpy().astype(np.float64)
    diff = features - centers[labels]
    np.testing.assert_allclose(x.grad.numpy(), 2.0 * diff / N, atol=1e-5)
    expected = np.zeros((C, D))
    np.add.at(expected, labels, -2.0 * diff / N)
    grad_c = loss_fn.centers.grad.numpy()
    assert np.isfinite(grad_c).all()
    np.testing.assert_allclose(grad_c, expected, atol=1e-5)
    absent = np.setdiff1d(np.arange(C), labels)
    assert (np.abs(grad_c[labels]).sum(1) > 0).all() and (grad_c[absent] == 0).all()


def test_batch_order_does_not_matter_and_no_pk_needed():
    paddle.seed(3)
    loss_fn = CenterLoss(C, D)
    features = np.random.default_rng(3).normal(size=(C, D)).astype(np.float32)
    labels = np.arange(C)  # one sample per class is fine for center loss
    perm = np.random.default_rng(4).permutation(C)
    a = float(loss_fn(paddle.to_tensor(features), paddle.to_tensor(labels)))
    b = float(loss_fn(paddle.to_tensor(features[perm]), paddle.to_tensor(labels[perm])))
    assert a > 0 and abs(a - b) / a < 1e-6


@pytest.mark.parametrize("labels", [[0, 1, C], [-1, 0, 1]], ids=["too-big", "negative"])
def test_labels_out_of_range(labels):
    x = paddle.zeros([3, D])
    with pytest.raises(ConfigError, match=rf"num_classes={C}"):
        CenterLoss(C, D)(x, paddle.to_tensor(labels))


def test_feature_dim_mismatch():
    with pytest.raises(ConfigError, match=rf"feat_dim={D}.*dimension {D + 1}"):
        CenterLoss(C, D)(paddle.zeros([3, D + 1]), paddle.to_tensor([0, 1, 2]))
