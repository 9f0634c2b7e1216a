"""rank() and RetrievalResults: one ranking gives the top k of a full stable sort, the positives'
exact ranks, and the metrics; views and JSON rows of it."""

import numpy as np
import pytest

from recog.metrics import RetrievalResults, hamming_metrics, rank, retrieval_metrics
from recog.metrics import _ranking as R
from recog.metrics.binary import signed_codes


def full_sort(qf, gf=None, binary=False):
    """Per query, the whole ranking (gallery indices) of a stable sort of its similarity row."""
    self_match = gf is None
    gf = qf if self_match else gf
    if binary:
        qf, gf = signed_codes(qf), signed_codes(gf)
    dtype = np.result_type(qf, gf, np.float32)
    with R._single_threaded_blas():  # the same products as the ranking's
        scores = R._score_rows(np.ascontiguousarray(qf, dtype), np.ascontiguousarray(gf, dtype), 0, len(qf))
    rankings = []
    for i, row in enumerate(scores):
        items = np.array([j for j in range(len(gf)) if not (self_match and j == i)], dtype=np.int64)
        rankings.append(items[np.argsort(-row[items], kind="stable")])
    return rankings, scores


def features(rng, kind, n, d):
    if kind == "ternary":  # most scores tie
        return rng.integers(-1, 2, size=(n, d)).astype(np.float32)
    if kind == "float64":
        return rng.standard_normal((n, d))
    return rng.standard_normal((n, d), dtype=np.float32)


@pytest.mark.parametrize("kind", ["ternary", "float32", "float64"])
@pytest.mark.parametrize("self_match", [True, False])
@pytest.mark.parametrize("block_size", [1, 7, 1024])
def test_top_k_and_positive_ranks_equal_a_full_stable_sort(kind, self_match, block_size):
    rng = np.random.default_rng(3)
    q, ql = features(rng, kind, 40, 6), rng.integers(0, 6, 40)
    g, gl = (None, None) if self_match else (features(rng, kind, 55, 6), rng.integers(0, 6, 55))
    results = rank(q, ql, g, gl, k=9, block_size=block_size)
    rankings, scores = full_sort(q, g)
    labels = ql if self_match else gl
    for i, order in enumerate(rankings):
        assert results.indices[i].tolist() == order[:9].tolist()
        np.testing.assert_array_equal(results.scores[i], scores[i, order[:9]])
        ranks = results.positive_ranks[results.positive_ptr[i] : results.positive_ptr[i + 1]]
        assert ranks.tolist() == np.flatnonzero(labels[order] == ql[i]).tolist()
    assert results.metrics() == retrieval_metrics(q, ql, g, gl)


def test_places_past_the_ranking_are_empty_and_labels_are_optional():
    x = np.eye(3, dtype=np.float32)
    results = rank(x, k=5)
    assert results.indices[:, 2:].tolist() == [[-1] * 3] * 3 and np.isneginf(results.scores[:, 2:]).all()
    assert not results.labelled and results.positive_ptr is None
    with pytest.raises(ValueError, match="need labels"):
        results.metrics()
    assert [len(row["results"]) for row in results.to_dicts()] == [2, 2, 2]
    unlabelled_gallery = rank(x, [0, 1, 2], x, k=1)
    assert not unlabelled_gallery.labelled and unlabelled_gallery.indices[:, 0].tolist() == [0, 1, 2]


def test_binary_codes_rank_by_hamming_distance_ascending():
    rng = np.random.default_rng(0)
    codes, labels = rng.integers(0, 2, (30, 12)).astype(np.uint8), rng.integers(0, 4, 30)
    results = rank(codes, labels, k=4, binary=True)
    rankings, _ = full_sort(codes, binary=True)
    for i, order in enumerate(rankings):
        assert results.indices[i].tolist() == order[:4].tolist()
        assert results.scores[i].tolist() == [int((codes[i] != codes[j]).sum()) for j in order[:4]]
    assert results.scores.dtype == np.int32 and results.metrics() == hamming_metrics(codes, labels)
    assert rank(codes[:2], k=3, binary=True, gallery_features=codes[:1]).scores[0, 1:].tolist() == [2**31 - 1] * 2


def test_worst_select_and_top_views():
    rng = np.random.default_rng(1)
    x, labels = rng.standard_normal((25, 4)).astype(np.float32), rng.integers(0, 3, 25)
    paths = [f"img{i}.png" for i in range(25)]
    results = rank(x, labels, k=6, query_paths=paths)
    ap = results.average_precision()
    worst = results.worst(4)
    assert ap[worst].tolist() == sorted(ap)[:4] and len(set(worst.tolist())) == 4
    part = results.select(worst).top(3)
    assert part.k == 3 and part.query_paths == [paths[i] for i in worst]
    np.testing.assert_array_equal(part.indices, results.indices[worst, :3])
    np.testing.assert_array_equal(part.average_precision(), ap[worst])
    rows = part.to_dicts()
    assert rows[0]["query"] == paths[worst[0]] and rows[0]["label"] == labels[worst[0]]
    assert rows[0]["results"][0]["path"] == paths[results.indices[worst[0], 0]]


def test_the_results_object_checks_what_it_is_given():
    with pytest.raises(ValueError, match="query paths: 1 for 2 items"):
        RetrievalResults(np.zeros((2, 1)), np.zeros((2, 1), np.int64), query_paths=["x"])
    with pytest.raises(ValueError, match="positive_ptr must have 3 entries"):
        RetrievalResults(np.zeros((2, 1)), np.zeros((2, 1), np.int64), positive_ptr=np.zeros(2), positive_ranks=[])
    with pytest.raises(ValueError, match="k must be a non-negative integer"):
        rank(np.eye(2, dtype=np.float32), k=-1)
