"""Pair scores collected while ranking: exact thresholds and FNMRs against all pairs scored by
brute force, for features and binary codes, any block size; the self pairs never count."""

import numpy as np
import pytest

import recog
from recog.errors import ConfigError
from recog.metrics import _ranking as R
from recog.metrics import pairs as P
from recog.metrics import rank

FMRS = (1e-2, 3e-3, 1e-3, 1e-4)


def clustered(n=240, d=8, classes=40, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    x = rng.standard_normal((classes, d))[labels] + 0.8 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype), labels


def all_pairs(q, ql, g=None, gl=None):
    """Every pair's score (the ranking's own products), split into positives and negatives."""
    self_match = g is None
    g, gl = (q, ql) if self_match else (g, gl)
    with R._single_threaded_blas():
        scores = R._score_rows(q, g, 0, len(q))
    keep = ~np.eye(len(q), dtype=bool) if self_match else np.ones(scores.shape, bool)
    same = ql[:, None] == gl[None, :]
    return np.sort(scores[keep & same]), np.sort(scores[keep & ~same])


def check_exact(found, positives, negatives, accepts):
    assert found.num_positives == len(positives) and found.num_negatives == len(negatives)
    np.testing.assert_array_equal(found.positives, positives)
    for fmr in FMRS:
        threshold, at_fmr, fnmr = found.threshold_at(fmr)
        passed = accepts(negatives, threshold)
        assert at_fmr == passed.mean() <= fmr
        assert fnmr == (~accepts(positives, threshold)).mean()
        # The lowest such threshold: the highest negative it rejects would push the FMR over.
        rejected = negatives[~passed]
        assert (passed.sum() + (rejected == rejected.max()).sum()) / len(negatives) > fmr


@pytest.mark.parametrize("block_size", [7, 1024])
@pytest.mark.parametrize("self_match", [True, False])
def test_thresholds_and_fnmr_are_exact(block_size, self_match):
    x, labels = clustered()
    q, ql, g, gl = (x, labels, None, None) if self_match else (x[:90], labels[:90], x[90:], labels[90:])
    found = rank(q, ql, g, gl, pairs=1e-2, block_size=block_size).pairs
    positives, negatives = all_pairs(q, ql, g, gl)
    check_exact(found, positives, negatives, lambda scores, t: scores >= t)
    pairs = len(q) * (len(q) - 1) if self_match else len(q) * len(g)
    assert len(found.top_negatives) == min(len(negatives), int(1e-2 * pairs) + 1)  # no more is held
    assert found.histogram.sum() == pytest.approx(len(negatives))


def test_hamming_thresholds_are_distances_accepted_at_or_below():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 20, 200)
    codes = (rng.standard_normal((20, 24))[labels] + 0.9 * rng.standard_normal((200, 24)) > 0).astype(np.uint8)
    found = rank(codes, labels, binary=True, pairs=1e-2, block_size=33).pairs
    distances = (codes[:, None, :] != codes[None, :, :]).sum(axis=2)
    keep = ~np.eye(200, dtype=bool)
    same = labels[:, None] == labels[None, :]
    positives, negatives = distances[keep & same], distances[keep & ~same]
    for fmr in FMRS:
        threshold, at_fmr, fnmr = found.threshold_at(fmr)
        assert threshold == int(threshold) and at_fmr == (negatives <= threshold).mean() <= fmr
        assert fnmr == (positives > threshold).mean()
        assert (negatives <= threshold + 1).mean() > fmr  # one more distance would exceed it
    assert found.histogram.sum() == pytest.approx(len(negatives))


def test_a_histogram_from_a_sample_of_pairs_still_counts_all_negatives(monkeypatch):
    monkeypatch.setattr(P, "HISTOGRAM_SAMPLES", 5000)
    x, labels = clustered(n=300)
    found = rank(x, labels, pairs=1e-2).pairs
    positives, negatives = all_pairs(x, labels)
    assert found.histogram.sum() == pytest.approx(len(negatives))
    whole = np.cumsum(np.histogram(negatives, bins=found.edges)[0]) / len(negatives)
    sampled = np.cumsum(found.histogram) / found.histogram.sum()
    assert np.abs(sampled - whole).max() < 0.03  # the sample's distribution is the whole's
    check_exact(found, positives, negatives, lambda scores, t: scores >= t)  # thresholds stay exact


def test_summary_names_the_metrics_and_the_det_curve_is_monotone():
    x, labels = clustered()
    found = rank(x, labels, pairs=1e-2).pairs
    summary = found.summary(1e-3)
    assert list(summary) == P.threshold_metric_names()
    assert P.fmr_name(1e-2) == "fnmr_at_fmr_1e-2" and P.fmr_name(1e-4) == "fnmr_at_fmr_1e-4"
    assert (summary["threshold"], summary["threshold_fmr"]) == found.threshold_at(1e-3)[:2]
    fmr, fnmr = found.det_curve()
    assert (np.diff(fmr) >= 0).all() and (np.diff(fnmr) <= 1e-12).all() and fmr[-1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="FMR must be in"):
        found.threshold_at(0.05)


@pytest.mark.slow
def test_the_target_fmr_is_checked_at_composition():
    assert recog.compose([]).eval.target_fmr == 1e-3
    for bad in ("0", "0.05", "-1e-3"):
        with pytest.raises(ConfigError, match="eval.target_fmr must be in"):
            recog.compose([f"eval.target_fmr={bad}"])
    with pytest.raises(ValueError, match="need labels"):
        rank(np.eye(3, dtype=np.float32), pairs=1e-2)


def test_a_floor_estimated_up_front_keeps_the_thresholds_exact(monkeypatch):
    monkeypatch.setattr(P, "FLOOR_SAMPLES", 1000)  # sets of 100 x 1000 pairs and more estimate it
    x, labels = clustered(n=400, classes=60)
    found = rank(x, labels, pairs=1e-2, block_size=16).pairs
    positives, negatives = all_pairs(x, labels)
    assert found.max_fmr == 1e-2 and len(found.top_negatives) == int(1e-2 * 400 * 399) + 1
    check_exact(found, positives, negatives, lambda scores, t: scores >= t)


def test_a_floor_estimated_too_high_narrows_the_exact_range_and_says_so(monkeypatch):
    x, labels = clustered(n=300)
    positives, negatives = all_pairs(x, labels)
    too_high = float(np.sort(negatives)[-100])  # only 100 negatives reach it, far fewer than 1% of them

    def start_above(self, *args):
        self.floor, self._estimated = too_high, True

    monkeypatch.setattr(P.PairCollector, "start_above", start_above)
    found = rank(x, labels, pairs=1e-2).pairs
    assert len(found.top_negatives) == 100 and found.max_fmr == 99 / len(negatives)
    with pytest.raises(ValueError, match="exactly resolved range"):
        found.threshold_at(1e-2)
    assert found.max_fmr > 1e-3  # 100 of about 87000
    summary = found.summary(2e-3)
    assert "fnmr_at_fmr_1e-2" not in summary and "threshold" not in summary and "fnmr_at_fmr_1e-3" in summary
    check = found.threshold_at(1e-4)  # within the range: still exact
    assert check[1] == (negatives >= check[0]).mean()
