"""Query expansion against a dense NumPy reference; flip TTA averaging."""

import numpy as np
import paddle
import pytest

import recog  # noqa: F401
from recog.postprocess import average_flipped, hflip_images, query_expansion


def _unit(n, d=16, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def dense_qe(q, g, k, alpha, self_match):
    q, g = q.astype(np.float64), g.astype(np.float64)
    sims = q @ g.T
    if self_match:
        np.fill_diagonal(sims, -np.inf)
    out = []
    for i in range(len(q)):
        top = np.argsort(-sims[i], kind="stable")[:k]
        w = np.ones(k) if alpha == 0 else np.maximum(sims[i, top], 0) ** alpha
        v = q[i] + (w[:, None] * g[top]).sum(0)
        out.append(v / np.linalg.norm(v))
    return np.array(out)


@pytest.mark.parametrize("k, alpha", [(1, 0.0), (5, 0.0), (4, 3.0)])
@pytest.mark.parametrize("self_match", [True, False])
def test_matches_dense_reference(k, alpha, self_match):
    q = _unit(30, seed=1)
    g = None if self_match else _unit(50, seed=2)
    got = query_expansion(q, g, k=k, alpha=alpha, block_size=7)
    expected = dense_qe(q, q if self_match else g, k, alpha, self_match)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert np.abs(got - q).max() > 0.05


def test_invalid_arguments():
    with pytest.raises(ValueError, match="k >= 1"):
        query_expansion(_unit(5), k=0)
    with pytest.raises(ValueError, match="alpha"):
        query_expansion(_unit(5), alpha=-1.0)
    with pytest.raises(ValueError, match="sizes differ"):
        query_expansion(_unit(5), _unit(5, d=8))


def test_average_flipped_is_the_normalised_mean():
    a, b = _unit(6, seed=3), _unit(6, seed=4)
    got = average_flipped(a, b)
    mean = (a + b) / 2
    np.testing.assert_allclose(got, mean / np.linalg.norm(mean, axis=1, keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(average_flipped(a, b, normalize=False), mean, rtol=1e-6)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        average_flipped(a, b[:3])


def test_hflip_images_numpy_and_paddle():
    images = np.arange(2 * 3 * 2 * 4, dtype=np.float32).reshape(2, 3, 2, 4)
    np.testing.assert_array_equal(hflip_images(images), images[..., ::-1])
    flipped = hflip_images(paddle.to_tensor(images))
    assert isinstance(flipped, paddle.Tensor)
    np.testing.assert_array_equal(flipped.numpy(), images[..., ::-1])
