import numpy as np
import pytest

from recog.metrics import format_metrics_table, retrieval_metrics
from recog.metrics._ranking import _SCORE_CHUNK, _score_rows

KS = (1, 2, 5, 10)


def reference_metrics(qf, ql, gf=None, gl=None, ks=KS):
    """Brute force: a full ranking per query with sorted(), then explicit loops."""
    self_match = gf is None
    if self_match:
        gf, gl = qf, ql
    scores = np.asarray(qf, dtype=np.float64) @ np.asarray(gf, dtype=np.float64).T
    hits_at = {k: 0 for k in ks}
    precision_sum = {k: 0.0 for k in ks}
    aps, inps, without = [], [], 0
    for i in range(len(qf)):
        items = [j for j in range(len(gf)) if not (self_match and j == i)]
        ranking = sorted(items, key=lambda j: (-scores[i, j], j))  # ties: lower index first
        positive_ranks = [r + 1 for r, j in enumerate(ranking) if gl[j] == ql[i]]  # 1-based
        if not positive_ranks:
            without += 1
            continue
        for k in ks:
            hits_at[k] += positive_ranks[0] <= k
            precision_sum[k] += sum(1 for j in ranking[:k] if gl[j] == ql[i]) / k
        aps.append(sum((n + 1) / r for n, r in enumerate(positive_ranks)) / len(positive_ranks))
        inps.append(len(positive_ranks) / positive_ranks[-1])
    out = {f"recall_at_{k}": hits_at[k] / len(aps) for k in ks}
    out.update({f"precision_at_{k}": precision_sum[k] / len(aps) for k in ks})
    out.update(mAP=sum(aps) / len(aps), mINP=sum(inps) / len(inps))
    out.update(num_queries=len(qf), num_queries_without_positive=without)
    return out


def assert_metrics_close(got, expected):
    assert list(got) == list(expected)
    for key, value in expected.items():
        if isinstance(value, int):
            assert got[key] == value, key
        else:
            assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


def make_features(rng, kind, n, d):
    if kind == "small_int":  # values in {-1, 0, 1}: many exact ties
        return rng.integers(-1, 2, size=(n, d)).astype(np.float32)
    if kind == "wide_int":  # a few ties, all arithmetic exact
        return rng.integers(-50, 51, size=(n, d)).astype(np.float32)
    return rng.standard_normal((n, d))  # float64, no ties


@pytest.mark.parametrize("kind", ["small_int", "wide_int", "float"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_separate_gallery_matches_brute_force(kind, seed):
    rng = np.random.default_rng(seed)
    qf, gf = make_features(rng, kind, 40, 4), make_features(rng, kind, 70, 4)
    gl = rng.integers(0, 8, size=70)
    ql = rng.integers(0, 10, size=40)  # labels 8 and 9 have no gallery item
    expected = reference_metrics(qf, ql, gf, gl)
    assert expected["num_queries_without_positive"] > 0
    got = retrieval_metrics(qf, ql, gf, gl, recall_at=KS, block_size=16)
    assert_metrics_close(got, expected)


@pytest.mark.parametrize("kind", ["small_int", "wide_int", "float"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_query_is_gallery_matches_brute_force(kind, seed):
    rng = np.random.default_rng(seed)
    feats = make_features(rng, kind, 80, 3)
    labels = rng.integers(0, 45, size=80)  # some labels occur once: no positive but self
    expected = reference_metrics(feats, labels)
    assert expected["num_queries_without_positive"] > 0
    got = retrieval_metrics(feats, labels, recall_at=KS, block_size=16)
    assert_metrics_close(got, expected)


@pytest.mark.parametrize("protocol", ["separate", "self"])
@pytest.mark.parametrize("kind", ["small_int", "float"])
def test_identical_results_for_any_block_size(protocol, kind):
    rng = np.random.default_rng(7)
    n = 2 * _SCORE_CHUNK + 100  # whole chunks and a partial one
    qf = make_features(rng, kind, n, 5).astype(np.float32)
    ql = rng.integers(0, n // 5, size=n)
    gallery = ()
    if protocol == "separate":
        gallery = (make_features(rng, kind, 90, 5), rng.integers(0, 50, size=90))
    results = [
        retrieval_metrics(qf, ql, *gallery, recall_at=KS, block_size=b)
        for b in (1000, 37, 130, _SCORE_CHUNK, 700, 5000)
    ]
    assert results[0]["num_queries_without_positive"] > 0
    for other in results[1:]:
        assert other == results[0]  # exact equality, floats included


def test_scores_do_not_depend_on_the_block():
    # BLAS rounds differently depending on the product's shape (seen with D=33, M=50).
    rng = np.random.default_rng(0)
    n = 2 * _SCORE_CHUNK + 100  # whole chunks (multiplied in place) and a partial one (padded)
    q = rng.standard_normal((n, 33)).astype(np.float32)
    g = rng.standard_normal((50, 33)).astype(np.float32)
    full = _score_rows(q, g, 0, n)
    for block in (7, 100, _SCORE_CHUNK, 600):
        parts = [_score_rows(q, g, s, min(s + block, n)) for s in range(0, n, block)]
        np.testing.assert_array_equal(np.concatenate(parts), full)
    exact = q.astype(np.float64) @ g.T.astype(np.float64)
    np.testing.assert_allclose(full, exact, rtol=1e-4, atol=1e-4)


def test_scores_of_a_one_chunk_gallery_do_not_depend_on_the_block():
    # numpy multiplies A @ A.T with another BLAS routine (syrk): query set == a gallery of one chunk.
    rng = np.random.default_rng(1)
    q = rng.standard_normal((_SCORE_CHUNK, 33)).astype(np.float32)
    full = _score_rows(q, q, 0, _SCORE_CHUNK)
    parts = [_score_rows(q, q, s, min(s + 100, _SCORE_CHUNK)) for s in range(0, _SCORE_CHUNK, 100)]
    np.testing.assert_array_equal(np.concatenate(parts), full)


def test_hand_computed_example():
    # Queries are one-hot, so column i of the gallery holds the scores of query i.
    queries = np.eye(3, dtype=np.float32)
    gallery = np.array([[5, 3, 1], [4, 1, 1], [4, 3, 1], [2, 0, 1], [1, 2, 1]], dtype=np.float32)
    query_labels = [0, 1, 3]
    gallery_labels = [0, 1, 0, 1, 2]
    # q0 (label 0): scores 5 4 4 2 1; the tie 4/4 puts item 1 (negative) before item 2
    #   (positive): ranking 0 1 2 3 4, positives at ranks 1 and 3.
    #   AP = (1/1 + 2/3) / 2 = 5/6, INP = 2/3, first positive at rank 1.
    # q1 (label 1): scores 3 1 3 0 2 -> ranking 0 2 4 1 3, positives at ranks 4 and 5.
    #   AP = (1/4 + 2/5) / 2 = 0.325, INP = 2/5, first positive at rank 4.
    # q2 (label 3): no positive -> excluded and counted.
    got = retrieval_metrics(queries, query_labels, gallery, gallery_labels, recall_at=(1, 3, 4))
    assert got == pytest.approx(
        {
            "recall_at_1": 0.5,
            "recall_at_3": 0.5,
            "recall_at_4": 1.0,
            # q0 has positives at ranks 1, 3; q1 at 4, 5: P@1 (1 + 0) / 2, P@3 (2/3 + 0) / 2,
            # P@4 (2/4 + 1/4) / 2.
            "precision_at_1": 0.5,
            "precision_at_3": 1 / 3,
            "precision_at_4": 0.375,
            "mAP": (5 / 6 + 0.325) / 2,
            "mINP": (2 / 3 + 2 / 5) / 2,
            "num_queries": 3,
            "num_queries_without_positive": 1,
        },
        rel=1e-12,
    )
    assert all("@" not in key for key in got)


def test_own_entry_is_removed_not_zeroed():
    # a and c share label 0; b and d have a label of their own (only themselves).
    feats = np.array([[10, 0], [9, 1], [0, 10], [1, 9]], dtype=np.float32)  # a b c d
    labels = [0, 1, 0, 2]
    # a: b 90, d 10, c 0 -> c at rank 3 (kept in the ranking, a itself would be rank 1;
    #    zeroed to score 0 it would tie c and come first by index, putting c at rank 4).
    # c: d 90, b 10, a 0 -> a at rank 3. b and d: no positive.
    got = retrieval_metrics(feats, labels, recall_at=(1, 2, 3))
    assert got == pytest.approx(
        {
            "recall_at_1": 0.0,
            "recall_at_2": 0.0,
            "recall_at_3": 1.0,
            "precision_at_1": 0.0,
            "precision_at_2": 0.0,
            "precision_at_3": 1 / 3,  # 1 positive among a's (and c's) 3 ranked items
            "mAP": 1 / 3,
            "mINP": 1 / 3,
            "num_queries": 4,
            "num_queries_without_positive": 2,
        },
        rel=1e-12,
    )


def test_no_query_with_a_positive_raises():
    feats = np.eye(4, dtype=np.float32)
    with pytest.raises(ValueError, match="none of the 4 queries has a positive"):
        retrieval_metrics(feats, [0, 1, 2, 3])  # each label only matches the query itself
    with pytest.raises(ValueError, match="has a positive"):
        retrieval_metrics(feats, [0, 1, 2, 3], feats, [4, 5, 6, 7])


def test_bad_inputs_raise():
    feats = np.ones((3, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="labels"):
        retrieval_metrics(feats, [0, 1])
    with pytest.raises(ValueError, match="both"):
        retrieval_metrics(feats, [0, 0, 1], gallery_features=feats)
    with pytest.raises(ValueError, match="feature sizes"):
        retrieval_metrics(feats, [0, 0, 1], np.ones((3, 4)), [0, 0, 1])
    with pytest.raises(ValueError, match="block_size"):
        retrieval_metrics(feats, [0, 0, 1], block_size=0)
    with pytest.raises(ValueError, match="inf or nan"):
        retrieval_metrics(np.array([[np.nan, 0.0]] * 2), [0, 0])
    with pytest.raises(ValueError, match="not all finite"):  # finite features, overflowing products
        retrieval_metrics(np.full((2, 2), 1e30, dtype=np.float32), [0, 0])
    with pytest.raises(ValueError, match="cannot be sorted"):
        retrieval_metrics(feats, [0, 0, 1], feats, np.array([{}, {}, {}], dtype=object))


def test_format_metrics_table():
    table = format_metrics_table({"recall_at_1": 0.123456, "mAP": np.float32(0.5), "num_queries": 60502})
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "value"]
    assert lines[2].split() == ["recall_at_1", "0.1235"]
    assert lines[3].split() == ["mAP", "0.5000"]
    assert lines[4].split() == ["num_queries", "60502"]
    assert len({len(line) for line in lines}) == 1  # columns aligned
