"""k-reciprocal re-ranking against a dense NumPy float64 implementation of the paper's formulas
(Zhong et al. 2017, eqs. 1-12), written here independently of the sparse one."""

import numpy as np
import pytest

from recog.postprocess import k_reciprocal_rerank


def _clustered(n, d=8, classes=6, noise=0.6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, d))
    x = centres[rng.integers(0, classes, n)] + noise * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def dense_rerank(points, n_queries, gallery_ids, k1, k2, lam, self_match):
    """float64, every distance materialised: ``d*`` of each query to each gallery point."""
    p = points.astype(np.float64)
    n = len(p)
    dist = ((p[:, None, :] - p[None, :, :]) ** 2).sum(-1)
    rank = np.argsort(dist, axis=1, kind="stable")
    for i in range(n):  # the point itself first (it is at distance 0)
        rank[i] = np.concatenate([[i], rank[i][rank[i] != i]])

    def reciprocal(i, k):
        return {j for j in rank[i, : k + 1] if i in rank[j, : k + 1]}

    half = int(np.around(k1 / 2))
    V = np.zeros((n, n))
    for i in range(n):
        r = reciprocal(i, k1)
        star = set(r)
        for j in r:
            rj = reciprocal(j, half)
            if len(rj & r) >= 2 / 3 * len(rj):
                star |= rj
        star = sorted(star)
        w = np.exp(-dist[i, star])
        V[i, star] = w / w.sum()
    V = np.stack([V[rank[i, :k2]].mean(0) for i in range(n)])
    final = np.empty((n_queries, len(gallery_ids)))
    for i in range(n_queries):
        for c, j in enumerate(gallery_ids):
            jac = 1 - np.minimum(V[i], V[j]).sum() / np.maximum(V[i], V[j]).sum()
            final[i, c] = (1 - lam) * jac + lam * dist[i, j]
    return final, dist[:n_queries][:, gallery_ids]


@pytest.mark.parametrize("k1, k2, lam", [(20, 6, 0.3), (6, 3, 0.1), (5, 1, 0.0), (9, 4, 1.0)])
def test_query_equals_gallery_matches_dense_reference(k1, k2, lam):
    x = _clustered(60)
    final, dist = dense_rerank(x, 60, np.arange(60), k1, k2, lam, True)
    indices, distances = k_reciprocal_rerank(x, None, k1=k1, k2=k2, lambda_value=lam, top_k=None)
    assert indices.shape == distances.shape == (60, 59)
    for i in range(60):
        others = np.array([j for j in range(60) if j != i])
        assert i not in indices[i]
        np.testing.assert_allclose(distances[i], np.sort(final[i, others]), rtol=1e-4, atol=1e-5)
        # Ties (lambda 0: d_J = 1 for every pair without shared neighbours) keep the original order.
        np.testing.assert_array_equal(indices[i], others[np.lexsort((dist[i, others], final[i, others]))])
    if lam < 1:  # the re-ranking changed something
        assert not all((np.diff(np.linalg.norm(x[indices[i]] - x[i], axis=1)) >= 0).all() for i in range(60))


def test_separate_gallery_matches_dense_reference():
    x = _clustered(50, seed=1)
    queries, gallery = x[:12], x[12:]
    final, dist = dense_rerank(x, 12, np.arange(12, 50), 8, 4, 0.3, False)
    indices, distances = k_reciprocal_rerank(queries, gallery, k1=8, k2=4, lambda_value=0.3, top_k=None)
    assert indices.shape == (12, 38)
    np.testing.assert_array_equal(indices, np.stack([np.lexsort((d, f)) for d, f in zip(dist, final)]))
    np.testing.assert_allclose(distances, np.sort(final, axis=1), rtol=1e-4, atol=1e-5)


def test_top_k_reorders_the_original_top_k_only():
    x = _clustered(80, seed=2)
    final, dist = dense_rerank(x, 20, np.arange(20, 80), 10, 4, 0.3, False)
    indices, distances = k_reciprocal_rerank(x[:20], x[20:], k1=10, k2=4, lambda_value=0.3, top_k=15, block_size=7)
    assert indices.shape == (20, 15)
    for i in range(20):
        top = np.argsort(dist[i], kind="stable")[:15]
        assert set(indices[i]) == set(top)
        np.testing.assert_array_equal(indices[i], top[np.argsort(final[i, top], kind="stable")])


def test_block_size_does_not_change_results():
    x = _clustered(70, seed=3)
    a = k_reciprocal_rerank(x, None, k1=7, k2=3, top_k=20, block_size=1000)
    b = k_reciprocal_rerank(x, None, k1=7, k2=3, top_k=20, block_size=9)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message", [({"k1": 0}, "k1"), ({"lambda_value": 1.5}, "lambda"), ({"top_k": 0}, "top_k")]
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        k_reciprocal_rerank(_clustered(10), None, **kwargs)


def test_nan_features_are_refused():
    x = _clustered(10)
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        k_reciprocal_rerank(x)
