"""Heads against a NumPy float64 reference of the formulas."""

import recog  # noqa: F401  (sets up the runtime before paddle is imported)

# isort: split

import math

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from recog.models.heads import ArcMargin, FCHead

N, D, C = 10, 6, 5
LABELS = np.array([0, 1, 2, 3, 4, 0, 1, 2, 3, 4])


def arcface_reference(x, w, labels, margin, scale, easy_margin):
    """float64 ArcFace: target logit s*cos(theta + m) with the usual fallbacks; others s*cos(theta)."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0, keepdims=True))
    theta = np.arccos(np.clip(cos, -1.0, 1.0))
    target = np.cos(theta + margin)
    if easy_margin:
        target = np.where(cos > 0, target, cos)
    else:  # theta + m past pi: cos(theta+m) would rise again; use cos - m sin(m) instead
        target = np.where(cos > math.cos(math.pi - margin), target, cos - margin * math.sin(margin))
    onehot = np.eye(w.shape[1])[labels]
    return scale * (onehot * target + (1 - onehot) * cos), cos


def _unit(v):
    return v / np.linalg.norm(v)


def _inputs(seed=0):
    """Features and a weight whose target cosines cover every branch of the formula."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, D))
    w = rng.standard_normal((D, C))

    # a unit vector orthogonal to x_i, to place column j at an exact angle from x_i
    def at_angle(i, theta):
        xi = _unit(x[i])
        u = rng.standard_normal(D)
        u = _unit(u - (u @ xi) * xi)
        return math.cos(theta) * xi + math.sin(theta) * u

    w[:, 0] = 2.0 * at_angle(0, math.pi - 0.15)  # past the threshold pi - m for m = 0.2 and 0.5
    w[:, 1] = 0.7 * at_angle(1, math.pi - 0.1)  # far past
    w[:, 2] = 1.3 * at_angle(2, 2.0)  # cos < 0, before the threshold
    w[:, 3] = 0.9 * at_angle(3, 0.6)  # cos > 0
    return x.astype("float32"), w.astype("float32")


def _head(w, margin=0.5, scale=30.0, easy_margin=False):
    head = ArcMargin(D, C, margin=margin, scale=scale, easy_margin=easy_margin)
    head.weight.set_value(paddle.to_tensor(w))
    return head


def _rel_err(got, ref):
    return np.abs(got - ref).max() / np.abs(ref).max()


def test_inputs_cover_every_branch():
    x, w = _inputs()
    _, cos = arcface_reference(x, w, LABELS, 0.5, 30.0, False)
    target = cos[np.arange(N), LABELS]
    for threshold in (math.cos(math.pi - 0.2), math.cos(math.pi - 0.5), 0.0):  # none on a branch boundary
        assert np.abs(target - threshold).min() > 1e-3
    assert (target < math.cos(math.pi - 0.2)).sum() >= 2  # past the threshold for m = 0.2 and 0.5
    assert ((target > math.cos(math.pi - 0.5)) & (target < 0)).any()
    assert (target > 0).any()


@pytest.mark.parametrize("easy_margin", [False, True])
@pytest.mark.parametrize("margin,scale", [(0.5, 30.0), (0.2, 64.0), (0.0, 10.0)])
def test_arcmargin_matches_reference(margin, scale, easy_margin):
    x, w = _inputs()
    head = _head(w, margin, scale, easy_margin)
    head.train()
    for labels in (paddle.to_tensor(LABELS), paddle.to_tensor(LABELS.reshape(-1, 1))):
        got = head(paddle.to_tensor(x), labels).numpy().astype(np.float64)
        ref, cos = arcface_reference(x, w, LABELS, margin, scale, easy_margin)
        assert got.shape == (N, C)
        assert _rel_err(got, ref) < 1e-5
        # elementwise, too (absolute floor for the few logits near 0)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * scale)
        off_target = np.ones((N, C), bool)
        off_target[np.arange(N), LABELS] = False
        np.testing.assert_allclose(got[off_target], scale * cos[off_target], rtol=1e-5, atol=1e-6 * scale)


def test_threshold_fallback_is_not_the_plain_formula():
    # The reference must be able to tell the branches apart on these inputs.
    x, w = _inputs()
    head = _head(w)
    head.train()
    got = head(paddle.to_tensor(x), paddle.to_tensor(LABELS)).numpy()
    _, cos = arcface_reference(x, w, LABELS, 0.5, 30.0, False)
    for i in (0, 1):  # past the threshold
        c = cos[i, LABELS[i]]
        assert got[i, LABELS[i]] == pytest.approx(30.0 * (c - 0.5 * math.sin(0.5)), rel=1e-5)
        assert abs(got[i, LABELS[i]] - 30.0 * math.cos(math.acos(c) + 0.5)) > 1.0
    easy = _head(w, easy_margin=True)
    easy.train()
    got = easy(paddle.to_tensor(x), paddle.to_tensor(LABELS)).numpy()
    assert got[2, 2] == pytest.approx(30.0 * cos[2, 2], rel=1e-5)  # cos < 0: no margin
    assert got[3, 3] == pytest.approx(30.0 * math.cos(0.6 + 0.5), rel=1e-5)


def test_eval_mode_or_no_labels_gives_plain_cosine():
    x, w = _inputs()
    head = _head(w)
    _, cos = arcface_reference(x, w, LABELS, 0.5, 30.0, False)
    head.train()
    np.testing.assert_allclose(head(paddle.to_tensor(x)).numpy(), cos, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(head(paddle.to_tensor(x), None).numpy(), cos, rtol=1e-5, atol=1e-6)
    head.eval()
    np.testing.assert_allclose(head(paddle.to_tensor(x), paddle.to_tensor(LABELS)).numpy(), cos, rtol=1e-5, atol=1e-6)
    assert np.abs(head(paddle.to_tensor(x)).numpy()).max() <= 1.0 + 1e-6  # no scale


def test_logits_do_not_depend_on_feature_or_weight_norm():
    x, w = _inputs()
    head = _head(w)
    head.train()
    a = head(paddle.to_tensor(x), paddle.to_tensor(LABELS)).numpy()
    b = head(paddle.to_tensor(x * 7.0), paddle.to_tensor(LABELS)).numpy()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _grads(head, x, labels):
    features = paddle.to_tensor(x, stop_gradient=False)
    logits = head(features, paddle.to_tensor(labels))
    F.cross_entropy(logits, paddle.to_tensor(labels)).backward()
    return features.grad.numpy(), head.weight.grad.numpy()


@pytest.mark.parametrize("easy_margin", [False, True])
def test_gradients_flow(easy_margin):
    x, w = _inputs()
    head = _head(w, easy_margin=easy_margin)
    head.train()
    feature_grad, weight_grad = _grads(head, x, LABELS)
    for grad in (feature_grad, weight_grad):
        assert np.isfinite(grad).all()
        assert np.abs(grad).sum() > 0
    assert (np.abs(feature_grad).sum(axis=1) > 0).all()  # every sample gets a gradient
    assert (np.abs(weight_grad).sum(axis=0) > 0).all()  # and every class centre


def test_gradients_finite_when_feature_is_aligned_with_its_class():
    # cos(theta) == +-1 exactly (feature parallel to its class centre, e.g. late in training):
    # d sqrt(1 - cos^2) is infinite there, which must not turn the gradients into NaN.
    w = np.eye(D, C).astype("float32")
    x = np.zeros((3, D), "float32")
    x[0, 0], x[1, 1], x[2, 2] = 3.0, 1.0, -2.0
    labels = np.array([0, 1, 2])
    for easy_margin in (False, True):
        head = _head(w, easy_margin=easy_margin)
        head.train()
        ref, _ = arcface_reference(x, w, labels, 0.5, 30.0, easy_margin)
        got = head(paddle.to_tensor(x), paddle.to_tensor(labels)).numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)
        feature_grad, weight_grad = _grads(head, x, labels)
        assert np.isfinite(feature_grad).all() and np.isfinite(weight_grad).all()


def test_arcmargin_parameter_shape():
    head = ArcMargin(16, 9)
    assert list(head.weight.shape) == [16, 9]
    assert [n for n, _ in head.named_parameters()] == ["weight"]


def test_fc_head():
    head = FCHead(embedding_size=8, class_num=3)
    x = paddle.to_tensor(np.random.default_rng(0).standard_normal((4, 8)).astype("float32"))
    out = head(x, paddle.to_tensor([0, 1, 2, 0]))
    assert out.shape == [4, 3]
    np.testing.assert_array_equal(out.numpy(), head(x).numpy())  # labels are ignored
    expected = x.numpy().astype(np.float64) @ head.fc.weight.numpy() + head.fc.bias.numpy()
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert list(head.fc.weight.shape) == [8, 3]
