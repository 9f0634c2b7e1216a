"""The blocked ranking gives exactly the ranks of a full stable sort, for any block size and protocol."""

import numpy as np
import pytest
import threadpoolctl

from recog.metrics import _ranking as R  # the ranking engine (monkeypatched below)
from recog.metrics import ranks as RK  # the metrics of the positives' ranks
from recog.metrics import retrieval as RS  # the ranking's input checks
from recog.metrics import retrieval_metrics

KS = [1, 2, 5, 10]
np_lexsort = np.lexsort  # the original, for the fallback test


def argsort_ranks(qf, ql, gf=None, gl=None):
    """Per query, the ascending 0-based ranks of its positives, from a full stable argsort of its row."""
    self_match = gf is None
    if self_match:
        gf, gl = qf, ql
    qf, gf = np.asarray(qf), np.asarray(gf)
    dtype = np.result_type(qf, gf, np.float32)
    with R._single_threaded_blas():  # the same products: BLAS rounding may depend on its threads
        scores = R._score_rows(qf.astype(dtype), gf.astype(dtype), 0, len(qf))
    ranks = []
    for i, row in enumerate(scores):
        items = np.array([j for j in range(len(gf)) if not (self_match and j == i)], dtype=np.int64)
        order = items[np.argsort(-row[items], kind="stable")]  # ties: lower index first
        ranks.append(np.flatnonzero(np.asarray(gl)[order] == ql[i]))
    return ranks


def blocked_ranks(qf, ql, gf=None, gl=None, block_size=16):
    qf, ql = RS.check_set(qf, ql, "query")
    if gf is not None:
        gf, gl = RS.check_set(gf, gl, "gallery")
    out = []
    for _, ptr, ranks in R.positive_ranks(qf, ql, gf, gl, block_size=block_size):
        out += np.split(ranks, ptr[1:-1])
    return out


def metrics_from_ranks(ranks, num_queries):
    """The final averages of retrieval_metrics, from per-query ranks."""
    ptr = np.concatenate([[0], np.cumsum([len(r) for r in ranks])]).astype(np.int64)
    first, ap, inp, hits = RK.query_stats(ptr, np.concatenate(ranks).astype(np.int64), KS)
    valid = first >= 0
    out = {f"recall_at_{k}": float(np.mean(first[valid] < k)) for k in KS}
    out.update({f"precision_at_{k}": float(np.mean(hits[valid, j] / k)) for j, k in enumerate(KS)})
    out.update(mAP=float(np.mean(ap[valid])), mINP=float(np.mean(inp[valid])))
    out.update(num_queries=num_queries, num_queries_without_positive=int(num_queries - valid.sum()))
    return out


def features(rng, kind, n, d):
    if kind == "ternary":  # values in {-1, 0, 1}: most scores tie
        return rng.integers(-1, 2, size=(n, d)).astype(np.float32)
    if kind == "wide_int":  # some ties, exact arithmetic
        return rng.integers(-20, 21, size=(n, d)).astype(np.float32)
    if kind == "float32":
        return rng.standard_normal((n, d), dtype=np.float32)
    return rng.standard_normal((n, d))  # float64: lexsort instead of packed keys when sorting


KINDS = ["ternary", "wide_int", "float32", "float64"]


@pytest.fixture(params=["sorting", "counting"])
def method(request, monkeypatch):
    """Forces one of the two ranking methods and checks, after the test, that it ran."""
    calls = {"sorting": 0, "counting": 0}
    for name in calls:
        original = getattr(R, f"_rank_by_{name}")

        def spy(*args, _name=name, _original=original):
            calls[_name] += 1
            return _original(*args)

        monkeypatch.setattr(R, f"_rank_by_{name}", spy)
    monkeypatch.setattr(R, "_prefer_sorting", lambda *args: request.param == "sorting")
    yield request.param
    assert calls[request.param] > 0
    assert sum(calls.values()) == calls[request.param]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("block_size", [1, 7, 64, 1000])
def test_query_is_gallery_ranks_equal_a_full_sort(kind, block_size, method):
    rng = np.random.default_rng(block_size)
    feats = features(rng, kind, 150, 3)
    labels = rng.integers(0, 70, size=150)  # some labels occur once: no positive but the query itself
    expected = argsort_ranks(feats, labels)
    assert any(len(r) == 0 for r in expected) and any(len(r) > 1 for r in expected)
    got = blocked_ranks(feats, labels, block_size=block_size)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)
    assert retrieval_metrics(feats, labels, recall_at=KS, block_size=block_size) == metrics_from_ranks(expected, 150)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("block_size", [1, 13, 1000])
def test_separate_gallery_ranks_equal_a_full_sort(kind, block_size, method):
    rng = np.random.default_rng(100 + block_size)
    qf, gf = features(rng, kind, 60, 4), features(rng, kind, 200, 4)
    ql = rng.integers(0, 25, size=60)  # labels 20..24 have no gallery item
    gl = rng.integers(0, 20, size=200)
    expected = argsort_ranks(qf, ql, gf, gl)
    assert any(len(r) == 0 for r in expected)
    got = blocked_ranks(qf, ql, gf, gl, block_size=block_size)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)
    assert retrieval_metrics(qf, ql, gf, gl, recall_at=KS, block_size=block_size) == metrics_from_ranks(expected, 60)


def test_string_labels_and_mixed_precision(method):
    rng = np.random.default_rng(3)
    qf = rng.integers(-2, 3, size=(40, 3)).astype(np.float32)
    gf = rng.integers(-2, 3, size=(90, 3)).astype(np.float64)  # compared in float64
    ql = np.array([f"c{i}" for i in rng.integers(0, 12, size=40)])
    gl = np.array([f"c{i}" for i in rng.integers(0, 10, size=90)])
    expected = argsort_ranks(qf, ql, gf, gl)
    for g, e in zip(blocked_ranks(qf, ql, gf, gl, block_size=9), expected):
        np.testing.assert_array_equal(g, e)


def test_ranking_threads_do_not_change_the_ranks(monkeypatch, method):
    rng = np.random.default_rng(5)
    feats = features(rng, "wide_int", 400, 3)
    labels = rng.integers(0, 80, size=400)
    monkeypatch.setattr(R, "_SCORE_CHUNK", 64)  # several chunks per block, ranked in parallel
    monkeypatch.setattr(R, "_RANK_GROUP", 8)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    one = blocked_ranks(feats, labels, block_size=150)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert R._thread_count() == min(4, R.os.cpu_count() or 1)
    many = blocked_ranks(feats, labels, block_size=150)
    for a, b, e in zip(one, many, argsort_ranks(feats, labels)):
        np.testing.assert_array_equal(a, e)
        np.testing.assert_array_equal(b, e)


def test_packed_keys_order_values_descending_then_columns():
    rng = np.random.default_rng(0)
    m, rows = 37, 5
    values = rng.choice(
        np.array([0.0, -0.0, 1.5, -1.5, 1e-42, -1e-42, 3e38, -3e38, 2.0, -7.25], dtype=np.float32), size=150
    )
    flat = np.sort(rng.choice(rows * m, size=150, replace=False))
    row, col = flat // m, flat % m
    keys = R._packed_keys(flat, values, m, (m - 1).bit_length(), np.bincount(row, minlength=rows))
    # -values: +0.0 and -0.0 compare equal, so their order falls to the column, as it must.
    expected = np.lexsort((col, -values, row))
    np.testing.assert_array_equal(np.argsort(keys, kind="stable"), expected)
    assert len(np.unique(keys)) == len(keys)
    zero = R._packed_keys(np.array([0, 0]), np.array([0.0, -0.0], dtype=np.float32), m, 6, np.array([2]))
    assert zero[0] == zero[1]


def test_huge_gallery_falls_back_to_the_three_key_sort(monkeypatch):
    # With more row + column bits than the packed key holds, float32 takes the lexsort path.
    rng = np.random.default_rng(9)
    feats = features(rng, "ternary", 120, 3)
    labels = rng.integers(0, 30, size=120)
    monkeypatch.setattr(R, "_ROW_COL_BITS", 4)
    monkeypatch.setattr(R, "_prefer_sorting", lambda *args: True)
    calls = []
    monkeypatch.setattr(np, "lexsort", lambda keys: calls.append(1) or np_lexsort(keys))
    for g, e in zip(blocked_ranks(feats, labels, block_size=120), argsort_ranks(feats, labels)):
        np.testing.assert_array_equal(g, e)
    assert calls  # the fallback ran


def test_stopping_early_restores_blas_threads():
    before = [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
    rng = np.random.default_rng(2)
    feats = features(rng, "float32", 3000, 8)
    ranks = R.positive_ranks(feats, rng.integers(0, 500, size=3000), block_size=512)
    next(ranks)
    during = [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
    ranks.close()  # the remaining blocks are not computed, and the limit is lifted
    after = [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
    assert during and all(t == 1 for t in during)
    assert after == before
