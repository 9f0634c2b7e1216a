"""Metrics of the post-processed ranking against metrics computed densely from explicit rankings."""

import numpy as np
import pytest

from recog.metrics import retrieval_metrics
from recog.postprocess import k_reciprocal_rerank, query_expansion
from recog.postprocess.metrics import postprocessed_metrics


def _data(n=60, d=8, classes=8, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    x = rng.standard_normal((classes, d))[labels] + 0.9 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def dense_metrics(rankings, query_labels, gallery_labels, ks):
    """From explicit full rankings (gallery indices per query), the formulas of retrieval_metrics."""
    first, ap, inp, prec = [], [], [], {k: [] for k in ks}
    for q, order in enumerate(rankings):
        pos = np.nonzero(gallery_labels[order] == query_labels[q])[0]
        if len(pos) == 0:
            continue
        first.append(pos[0])
        ap.append(np.mean(np.arange(1, len(pos) + 1) / (pos + 1)))
        inp.append(len(pos) / (pos[-1] + 1))
        for k in ks:
            prec[k].append((pos < k).sum() / k)
    out = {f"recall_at_{k}": np.mean(np.array(first) < k) for k in ks}
    out.update({f"precision_at_{k}": np.mean(prec[k]) for k in ks})
    out.update(mAP=np.mean(ap), mINP=np.mean(inp))
    return out


def _check(got, expected):
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


@pytest.mark.parametrize("top_k", [59, 12])
def test_rerank_query_equals_gallery(top_k):
    x, labels = _data()
    reranked, _ = k_reciprocal_rerank(x, None, k1=8, k2=3, lambda_value=0.3, top_k=top_k)
    rankings = []
    for q in range(len(x)):
        sims = x @ x[q]
        sims[q] = -np.inf
        rest = [j for j in np.argsort(-sims, kind="stable")[:-1] if j not in set(reranked[q])]
        rankings.append(np.concatenate([reranked[q], rest]).astype(int))
    expected = dense_metrics(rankings, labels, labels, [1, 5, 10])
    got = postprocessed_metrics(x, labels, recall_at=(1, 5, 10), rerank_top_k=top_k, k1=8, k2=3, lambda_value=0.3)
    _check(got, expected)
    plain = retrieval_metrics(x, labels, recall_at=(1, 5, 10))
    assert got["mAP"] != plain["mAP"]


def test_rerank_separate_gallery_and_query_expansion():
    x, labels = _data(seed=1)
    q, ql, g, gl = x[:15], labels[:15], x[15:], labels[15:]
    expanded = query_expansion(q, g, k=3, alpha=0.0)
    reranked, _ = k_reciprocal_rerank(expanded, g, k1=6, k2=2, lambda_value=0.2, top_k=g.shape[0])
    expected = dense_metrics(reranked, ql, gl, [1, 3])
    got = postprocessed_metrics(q, ql, g, gl, recall_at=(1, 3), qe_k=3, rerank_top_k=100, k1=6, k2=2, lambda_value=0.2)
    _check(got, expected)


def test_query_expansion_alone_and_nothing():
    x, labels = _data(seed=2)
    assert postprocessed_metrics(x, labels) == retrieval_metrics(x, labels)
    expanded = query_expansion(x, None, k=2, alpha=3.0)
    assert postprocessed_metrics(x, labels, qe_k=2, qe_alpha=3.0) == retrieval_metrics(expanded, labels)
