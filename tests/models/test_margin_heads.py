"""CosMargin and CircleMargin against NumPy float64 references of the formulas."""

import recog  # noqa: F401  (sets up the runtime before paddle is imported)

# isort: split

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from recog.models.heads import CircleMargin, CosMargin

N, D, C = 12, 7, 5
LABELS = np.array([0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1])


def _cosine(x, w):
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0, keepdims=True))


def cosface_reference(x, w, labels, margin, scale):
    cos = _cosine(x, w)
    onehot = np.eye(w.shape[1])[labels]
    return scale * (cos - margin * onehot)


def circle_reference(x, w, labels, margin, scale):
    """float64 Circle loss logits; also the constant weights alpha (d logit / d cos = scale * alpha)."""
    cos = _cosine(x, w)
    onehot = np.eye(w.shape[1])[labels]
    alpha_p = np.maximum(1 + margin - cos, 0)
    alpha_n = np.maximum(cos + margin, 0)
    target = alpha_p * (cos - (1 - margin))
    other = alpha_n * (cos - margin)
    alpha = onehot * alpha_p + (1 - onehot) * alpha_n
    return scale * (onehot * target + (1 - onehot) * other), alpha


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, D)) * rng.uniform(0.5, 3.0, (N, 1))
    w = rng.standard_normal((D, C)) * rng.uniform(0.5, 2.0, (1, C))
    w[:, 1] = -x[3] / np.linalg.norm(x[3]) * 0.8  # cos = -1: alpha_n = 0 for (3, 1)
    return x.astype("float32"), w.astype("float32")


def _head(cls, w, **kwargs):
    head = cls(D, C, **kwargs)
    head.weight.set_value(paddle.to_tensor(w))
    head.train()
    return head


def _rel_err(got, ref):
    return np.abs(got - ref).max() / np.abs(ref).max()


def test_defaults_and_parameter_names():
    cos_head, circle_head = CosMargin(16, 9), CircleMargin(16, 9)
    assert (cos_head.margin, cos_head.scale) == (0.15, 64.0)
    assert (circle_head.margin, circle_head.scale) == (0.25, 256.0)
    for head in (cos_head, circle_head):  # PaddleClas's name and layout: weights load by name
        assert [n for n, _ in head.named_parameters()] == ["weight"]
        assert list(head.weight.shape) == [16, 9]


@pytest.mark.parametrize("margin,scale", [(0.15, 64.0), (0.35, 30.0), (0.0, 1.0)])
def test_cosmargin_matches_reference(margin, scale):
    x, w = _inputs()
    head = _head(CosMargin, w, margin=margin, scale=scale)
    ref = cosface_reference(x, w, LABELS, margin, scale)
    for labels in (LABELS, LABELS.reshape(-1, 1)):
        got = head(paddle.to_tensor(x), paddle.to_tensor(labels)).numpy().astype(np.float64)
        assert got.shape == (N, C)
        assert _rel_err(got, ref) < 1e-5
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * scale)
    # the margin moves exactly the target logits, by scale * margin
    diff = ref - scale * _cosine(x, w)
    assert np.allclose(diff[np.arange(N), LABELS], -scale * margin)


@pytest.mark.parametrize("margin,scale", [(0.25, 256.0), (0.4, 64.0), (0.1, 1.0)])
def test_circlemargin_matches_reference(margin, scale):
    x, w = _inputs()
    head = _head(CircleMargin, w, margin=margin, scale=scale)
    ref, alpha = circle_reference(x, w, LABELS, margin, scale)
    for labels in (LABELS, LABELS.reshape(-1, 1)):
        got = head(paddle.to_tensor(x), paddle.to_tensor(labels)).numpy().astype(np.float64)
        assert got.shape == (N, C)
        assert _rel_err(got, ref) < 1e-5
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * scale)
    assert (alpha == 0).any()  # the inputs reach the relu's clipped side...
    assert got[3, 1] == 0.0  # ...where the logit is exactly 0


def test_circlemargin_is_not_cosface():
    # The reference must distinguish the formulas: adaptive weights change the logits a lot.
    x, w = _inputs()
    circle, _ = circle_reference(x, w, LABELS, 0.25, 256.0)
    assert np.abs(circle - cosface_reference(x, w, LABELS, 0.25, 256.0)).max() > 10.0


@pytest.mark.parametrize("cls", [CosMargin, CircleMargin])
def test_eval_mode_or_no_labels_gives_plain_cosine(cls):
    x, w = _inputs()
    head = _head(cls, w)
    cos = _cosine(x, w)
    np.testing.assert_allclose(head(paddle.to_tensor(x)).numpy(), cos, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(head(paddle.to_tensor(x), None).numpy(), cos, rtol=1e-5, atol=1e-6)
    head.eval()
    np.testing.assert_allclose(head(paddle.to_tensor(x), paddle.to_tensor(LABELS)).numpy(), cos, rtol=1e-5, atol=1e-6)
    head.train()  # and the margin really is applied in training
    assert np.abs(head(paddle.to_tensor(x), paddle.to_tensor(LABELS)).numpy() - cos).max() > 1.0


@pytest.mark.parametrize("cls", [CosMargin, CircleMargin])
def test_gradients_flow(cls):
    x, w = _inputs()
    head = _head(cls, w)
    features = paddle.to_tensor(x, stop_gradient=False)
    logits = head(features, paddle.to_tensor(LABELS))
    F.cross_entropy(logits, paddle.to_tensor(LABELS)).backward()
    for grad in (features.grad.numpy(), head.weight.grad.numpy()):
        assert np.isfinite(grad).all()
    assert (np.abs(features.grad.numpy()).sum(axis=1) > 0).all()  # every sample
    assert (np.abs(head.weight.grad.numpy()).sum(axis=0) > 0).all()  # every class centre


def test_circlemargin_weights_are_constants_in_backprop():
    # d logits / d cos = scale * alpha with alpha held constant (PaddleClas and the paper detach
    # it): the gradient of sum(G * logits) equals that of sum(G * scale * alpha * cos).
    x, w = _inputs()
    scale, margin = 256.0, 0.25
    _, alpha = circle_reference(x, w, LABELS, margin, scale)
    g = np.random.default_rng(1).standard_normal((N, C))

    head = _head(CircleMargin, w, margin=margin, scale=scale)
    features = paddle.to_tensor(x, stop_gradient=False)
    (head(features, paddle.to_tensor(LABELS)) * paddle.to_tensor(g.astype("float32"))).sum().backward()
    got_features, got_weight = features.grad.numpy(), head.weight.grad.numpy()

    plain = _head(CircleMargin, w)  # no labels: the cosine
    features = paddle.to_tensor(x, stop_gradient=False)
    (plain(features) * paddle.to_tensor((g * scale * alpha).astype("float32"))).sum().backward()
    np.testing.assert_allclose(got_features, features.grad.numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(got_weight, plain.weight.grad.numpy(), rtol=1e-4, atol=1e-3)

    # Differentiating alpha too would give d logit / d cos = scale * (2 - 2 cos) for the target
    # and scale * 2 cos for the others (where alpha > 0): far from what the head computes.
    cos = _cosine(x, w)
    onehot = np.eye(C)[LABELS]
    full = np.where(alpha > 0, onehot * (2 - 2 * cos) + (1 - onehot) * 2 * cos, 0.0)
    features = paddle.to_tensor(x, stop_gradient=False)
    (plain(features) * paddle.to_tensor((g * scale * full).astype("float32"))).sum().backward()
    assert np.abs(got_features - features.grad.numpy()).max() > 100 * 1e-3
