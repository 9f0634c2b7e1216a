"""AdaMargin (AdaFace) against a NumPy float64 reference of the paper's formulas and against
PaddleClas 2.6.0's own AdaMargin (the oracle wheel)."""

import recog  # noqa: F401  (sets up the runtime before paddle is imported)

# isort: split

import math

import numpy as np
import paddle
import pytest
from paddleclas_oracle import import_ppcls, randomise

from recog.models.heads.adamargin import AdaMargin
from recog.models.weights import load_pretrained

N, D, C = 10, 8, 5


@pytest.fixture(scope="module")
def gears(tmp_path_factory):
    return import_ppcls(tmp_path_factory.mktemp("paddleclas"), "arch.gears")["arch.gears"]


def adaface_reference(x, kernel, labels, m, h, s, t_alpha, mean0, std0, eps=1e-3):
    """float64 AdaFace logits (Kim et al. 2022, eqs. 10-12) and the updated (mean, std)."""
    x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    cos = np.clip((x / norms) @ (kernel / np.linalg.norm(kernel, axis=0, keepdims=True)), -1 + eps, 1 - eps)
    safe = np.clip(norms, 0.001, 100)
    mean = t_alpha * safe.mean() + (1 - t_alpha) * mean0
    std = t_alpha * safe.std(ddof=1) + (1 - t_alpha) * std0
    zhat = np.clip(h * (safe - mean) / (std + eps), -1, 1)
    onehot = np.eye(kernel.shape[1])[labels]
    theta = np.clip(np.arccos(cos) + onehot * (-m * zhat), eps, math.pi - eps)
    return s * (np.cos(theta) - onehot * (m + m * zhat)), mean, std


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, D)) * rng.uniform(0.2, 5.0, (N, 1))  # spread norms: zhat at both clips
    return x.astype("float32"), rng.integers(0, C, N)


@pytest.mark.parametrize("m, h, s, t_alpha", [(0.4, 0.333, 64.0, 1.0), (0.3, 1.0, 32.0, 0.6)])
def test_matches_formula_reference(m, h, s, t_alpha):
    x, labels = _inputs()
    head = AdaMargin(D, C, m=m, h=h, s=s, t_alpha=t_alpha)
    head.train()
    kernel = head.kernel.numpy()
    ref1, mean, std = adaface_reference(x, kernel, labels, m, h, s, t_alpha, 20.0, 100.0)
    got = head(paddle.to_tensor(x), paddle.to_tensor(labels)).numpy()
    assert np.abs(got - ref1).max() / np.abs(ref1).max() < 1e-5
    np.testing.assert_allclose(
        [float(head.batch_mean.numpy()[0]), float(head.batch_std.numpy()[0])], [mean, std], rtol=1e-5
    )
    x2, labels2 = _inputs(seed=1)  # a second step reads the moving statistics
    ref2, _, _ = adaface_reference(x2, kernel, labels2, m, h, s, t_alpha, mean, std)
    got2 = head(paddle.to_tensor(x2), paddle.to_tensor(labels2)).numpy()
    assert np.abs(got2 - ref2).max() / np.abs(ref2).max() < 1e-5
    # The margin changed the target logits only.
    cos = AdaMargin.forward(head, paddle.to_tensor(x2)).numpy()
    off_target = np.eye(C)[labels2] == 0
    np.testing.assert_allclose(
        got2[off_target], s * np.clip(cos, -1 + 1e-3, 1 - 1e-3)[off_target], rtol=1e-5, atol=1e-4
    )
    assert np.abs(got2[~off_target] - s * cos[~off_target]).min() > 1e-3


@pytest.mark.parametrize("t_alpha", [1.0, 0.5])
def test_matches_paddleclas(gears, tmp_path, t_alpha):
    theirs = gears.AdaMargin(embedding_size=D, class_num=C, m=0.4, h=0.333, s=64.0, t_alpha=t_alpha)
    ours = AdaMargin(D, C, t_alpha=t_alpha)
    randomise(theirs, tmp_path / "ada.pdparams")
    theirs.batch_mean.set_value(paddle.to_tensor([1.5])), theirs.batch_std.set_value(paddle.to_tensor([0.7]))
    paddle.save(theirs.state_dict(), str(tmp_path / "ada.pdparams"))
    report = load_pretrained(ours, tmp_path / "ada.pdparams")
    assert report["missing"] == [] and report["unexpected"] == []
    assert sorted(report["loaded"]) == ["batch_mean", "batch_std", "kernel", "t"]
    theirs.train(), ours.train()
    for seed in (0, 1):
        x, labels = _inputs(seed)
        x, labels = paddle.to_tensor(x), paddle.to_tensor(labels)
        np.testing.assert_allclose(ours(x, labels).numpy(), theirs(x, labels).numpy(), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(ours.batch_std.numpy(), theirs.batch_std.numpy(), rtol=1e-6)


def test_eval_and_no_labels_give_the_cosine():
    x, labels = _inputs()
    head = AdaMargin(D, C)
    kernel = head.kernel.numpy()
    expected = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (kernel / np.linalg.norm(kernel, axis=0))
    head.eval()
    np.testing.assert_allclose(head(paddle.to_tensor(x), paddle.to_tensor(labels)).numpy(), expected, atol=1e-5)
    assert float(head.batch_mean.numpy()[0]) == 20.0  # statistics untouched outside training
    head.train()
    np.testing.assert_allclose(head(paddle.to_tensor(x)).numpy(), expected, atol=1e-5)


def test_gradients_and_single_sample_batch():
    x, labels = _inputs()
    head = AdaMargin(D, C)
    head.train()
    features = paddle.to_tensor(x, stop_gradient=False)
    head(features, paddle.to_tensor(labels)).sum().backward()
    assert np.isfinite(features.grad.numpy()).all() and np.abs(features.grad.numpy()).sum() > 0
    assert np.abs(head.kernel.grad.numpy()).sum() > 0
    one = head(paddle.to_tensor(x[:1]), paddle.to_tensor(labels[:1])).numpy()
    assert np.isfinite(one).all() and float(head.batch_std.numpy()[0]) == 0.0


def test_initial_kernel_columns_are_unit_vectors():
    norms = np.linalg.norm(AdaMargin(16, 9).kernel.numpy(), axis=0)
    np.testing.assert_allclose(norms, np.ones(9), rtol=1e-5)
