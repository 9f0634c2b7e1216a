"""The scores of all query-gallery pairs, and the threshold that tells a match from a non-match.

A pair is positive when query and gallery item share a label, negative otherwise; a query and
its own entry (query == gallery) are never a pair. A threshold accepts a pair whose score is at
least it (inner product; Hamming distance: at most it). At a threshold:

* FMR, the false-match rate: the fraction of negative pairs accepted;
* FNMR, the false-non-match rate: the fraction of positive pairs rejected.

``threshold_at(fmr)`` is the lowest threshold whose FMR is at most ``fmr`` (the operating point that
rejects the fewest positives within that budget). At SOP scale (60k queries == gallery) there are
3.7e9 pairs, so the collector never holds them all, yet its thresholds and FNMRs are exact:

* positive pairs (about 5 per query) are all kept;
* of the negatives, exactly the ``keep`` highest scores are kept, ``keep`` = ``max_fmr`` x the
  negatives + 1: every threshold at FMR <= ``max_fmr`` lies among them. They are collected while
  the gallery is ranked, chunk by chunk (``recog.metrics.rank(pairs=...)``), above a floor that
  rises as the kept set fills (memory: at most twice ``keep`` scores); in large sets the floor
  starts at an estimate from a sample of pairs (``PairCollector.start_above``), so that the
  ranking copies a few percent of the scores, not all of them at first;
* a histogram of the negatives (a fixed sample of pairs, at most ``HISTOGRAM_SAMPLES`` of them, all
  of them in smaller sets) describes the rest of the distribution, for plots and for the part of
  the DET curve above ``max_fmr``.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass

import numpy as np

from recog.errors import ConfigError

REPORTED_FMRS = (1e-2, 1e-3, 1e-4)  # FNMR is reported at each: fnmr_at_fmr_1e-2, ...
HISTOGRAM_BINS = 2000  # over [-bound, bound] (real features) or one per distance (codes)
HISTOGRAM_SAMPLES = 4_000_000
FLOOR_SAMPLES = 200_000  # negative pairs scored up front to estimate where the kept negatives start


MAX_TARGET_FMR = max(REPORTED_FMRS)  # thresholds are exact up to it (eval.target_fmr's upper bound)


def check_target_fmr(value) -> float:
    """``eval.target_fmr`` as a float in (0, ``MAX_TARGET_FMR``], or ``ConfigError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= MAX_TARGET_FMR:
        raise ConfigError(
            f"eval.target_fmr must be in (0, {MAX_TARGET_FMR:g}] (the false-match rate the threshold is "
            f"chosen at: the fraction of different-class pairs it accepts), got {value!r}"
        )
    return float(value)


def fmr_name(fmr: float) -> str:
    """``1e-3`` -> ``fnmr_at_fmr_1e-3``: the metric name of the FNMR at that FMR."""
    return "fnmr_at_fmr_" + re.sub(r"e([+-])0*(\d)", r"e\1\2", f"{fmr:.0e}")


# The metrics of the threshold at the target FMR: the threshold, its FMR and FNMR, the pair counts.
THRESHOLD, THRESHOLD_FMR, THRESHOLD_FNMR = "threshold", "threshold_fmr", "threshold_fnmr"
POSITIVE_PAIRS, NEGATIVE_PAIRS = "positive_pairs", "negative_pairs"


def threshold_metric_names() -> list[str]:
    """What an eval reports about its pairs besides the ranking metrics (``PairScores.summary``):
    the FNMR at each of ``REPORTED_FMRS``, and the threshold at ``eval.target_fmr`` with its FMR,
    its FNMR and the pair counts. FNMR is lower-is-better: none of these can be ``trainer.monitor``."""
    return [fmr_name(f) for f in REPORTED_FMRS] + [
        THRESHOLD,
        THRESHOLD_FMR,
        THRESHOLD_FNMR,
        POSITIVE_PAIRS,
        NEGATIVE_PAIRS,
    ]


@dataclass(frozen=True)
class PairScores:
    """The pair-score distributions of one ranking (module docstring). Scores are inner products
    (for codes, of their +-1 vectors: ``dim - 2 * Hamming distance``)."""

    positives: np.ndarray  # [P] every positive pair's score, ascending
    top_negatives: np.ndarray  # the highest negative scores, ascending (all of them in a small set)
    num_negatives: int
    max_fmr: float  # thresholds at FMR <= max_fmr are exact
    histogram: np.ndarray  # [bins] negative pairs per bin, scaled from the sample to all negatives
    edges: np.ndarray  # [bins + 1] the bins' score edges
    hamming_dim: int | None = None  # the code length D for binary codes, else None

    @property
    def num_positives(self) -> int:
        return len(self.positives)

    def threshold_at(self, fmr: float) -> tuple[float, float, float | None]:
        """``(threshold, its FMR, its FNMR)`` for the lowest threshold of FMR <= ``fmr``: a score
        (accepted when >=) or, for codes, a Hamming distance (accepted when <=; -1 accepts none).
        FNMR is None without positive pairs."""
        if not 0.0 < fmr <= self.max_fmr:
            raise ValueError(f"FMR must be in (0, {self.max_fmr:g}] (the exactly resolved range), got {fmr!r}")
        if self.num_negatives == 0:
            raise ValueError("there are no negative pairs: no threshold can be calibrated")
        tail = self.top_negatives
        allowed = min(math.floor(fmr * self.num_negatives * (1 + 1e-12)), len(tail) - 1)  # may pass
        boundary = tail[len(tail) - 1 - allowed]  # the highest negative that must not pass
        accepted = len(tail) - int(np.searchsorted(tail, boundary, side="right"))  # negatives above it
        rejected = int(np.searchsorted(self.positives, boundary, side="right"))  # positives at or below it
        fnmr = rejected / self.num_positives if self.num_positives else None
        if self.hamming_dim is not None:  # distance (D - score) / 2: accept the distances below the boundary's
            score = float((self.hamming_dim - float(boundary)) / 2 - 1)
        else:  # the next float up: accepts exactly the scores above the boundary
            score = float(np.nextafter(boundary, np.array(np.inf, dtype=tail.dtype)))
        return score, accepted / self.num_negatives, fnmr

    def summary(self, target_fmr: float) -> dict[str, float | int]:
        """``threshold_metric_names()``: the FNMR at each reported FMR, the threshold at ``target_fmr``
        with its FMR and FNMR, the pair counts ({} without negative pairs; FNMRs left out without
        positive pairs; values at an FMR beyond ``max_fmr`` left out)."""
        if self.num_negatives == 0:
            return {}
        out: dict[str, float | int] = {}
        for fmr in REPORTED_FMRS:
            fnmr = self.threshold_at(fmr)[2] if fmr <= self.max_fmr else None
            if fnmr is not None:
                out[fmr_name(fmr)] = fnmr
        if target_fmr <= self.max_fmr:
            threshold, fmr, fnmr = self.threshold_at(target_fmr)
            out.update({THRESHOLD: threshold, THRESHOLD_FMR: fmr})
            if fnmr is not None:
                out[THRESHOLD_FNMR] = fnmr
        out.update({POSITIVE_PAIRS: self.num_positives, NEGATIVE_PAIRS: self.num_negatives})
        return out

    def det_curve(self, points: int = 200) -> tuple[np.ndarray, np.ndarray]:
        """``(fmr, fnmr)``, FMR ascending from 1 / negatives to 1: exact at FMR <= ``max_fmr``, from
        the histogram above it."""
        if self.num_negatives == 0 or self.num_positives == 0:
            return np.zeros(0), np.zeros(0)
        low = math.log10(max(1.0 / self.num_negatives, 1e-12))
        fmrs = np.logspace(low, math.log10(self.max_fmr), points // 2)
        exact = np.array([self.threshold_at(f)[1:] for f in fmrs], dtype=float)
        # Above max_fmr: thresholds at the histogram's bin edges, highest first.
        passing = np.cumsum(self.histogram[::-1])[::-1] / max(self.histogram.sum(), 1)  # FMR at each lower edge
        rejected = np.searchsorted(self.positives, self.edges[:-1], side="left") / self.num_positives
        coarse = passing > self.max_fmr
        fmr = np.concatenate([exact[:, 0], passing[coarse][::-1]])
        fnmr = np.concatenate([exact[:, 1], rejected[coarse][::-1]])
        return fmr, fnmr


class PairCollector:
    """Collects ``PairScores`` while ``recog.metrics.rank`` ranks: ``chunk`` runs in the ranking's
    worker threads on each chunk of similarities, ``add`` in the calling thread on its result."""

    def __init__(
        self, num_pairs: int, bound: float, self_match: bool, max_fmr: float = max(REPORTED_FMRS), hamming_dim=None
    ):
        """``num_pairs``: all query-gallery pairs but the self pairs (an upper bound of the negatives);
        ``bound``: no score exceeds it in absolute value (the histogram's range); ``self_match``:
        each chunk row's own entry is -inf (query == gallery); ``hamming_dim``: the code length for
        binary codes (+-1 inner products), else None."""
        if not 0.0 < max_fmr < 1.0:
            raise ValueError(f"max_fmr must be in (0, 1), got {max_fmr!r}")
        self.keep = math.floor(max_fmr * num_pairs * (1 + 1e-12)) + 1
        self._pairs = num_pairs
        self.max_fmr = float(max_fmr)
        self.hamming_dim = hamming_dim
        self.self_match = self_match
        self.stride = max(1, math.ceil(num_pairs / HISTOGRAM_SAMPLES))  # every stride-th gallery column
        if hamming_dim is not None:  # one bin per distance: scores D, D - 2, ..., -D
            self.edges = np.arange(-hamming_dim - 1, hamming_dim + 2, 2, dtype=np.float64)
        else:
            bound = bound if bound > 0 and math.isfinite(bound) else 1.0
            self.edges = np.linspace(-bound, bound, HISTOGRAM_BINS + 1)
        self._bin_width = float(self.edges[1] - self.edges[0])  # equal bins: a score's bin by arithmetic
        self.floor = -np.inf  # scores below it cannot be among the kept negatives (only rises)
        self._estimated = False  # whether the floor started at an estimate (start_above)
        self._lock = threading.Lock()
        self._tail: list[np.ndarray] = []
        self._tail_size = 0
        self._positives: list[np.ndarray] = []
        self._histogram = np.zeros(len(self.edges) - 1, dtype=np.int64)
        self._sampled = 0
        self.num_negatives = 0

    def start_above(self, queries, query_labels, gallery=None, gallery_labels=None, seed: int = 0) -> None:
        """Before the ranking, raise the floor to an estimate that leaves about twice ``keep``
        negatives above it: the score a random sample of ``FLOOR_SAMPLES`` negative pairs exceeds
        with frequency ``2 * max_fmr``. It spares the ranking the copying of every score while the
        kept set first fills. Should fewer than ``keep`` negatives lie above it (the sample would
        be off by tens of standard deviations), the exact range shrinks to what was kept
        (``PairScores.max_fmr``). Skipped for small sets, where it would not pay."""
        self_match = gallery is None
        gallery, gallery_labels = (queries, query_labels) if self_match else (gallery, gallery_labels)
        if self._pairs < 100 * FLOOR_SAMPLES:
            return
        rng = np.random.default_rng(seed)
        i = rng.integers(0, len(queries), 2 * FLOOR_SAMPLES)
        j = rng.integers(0, len(gallery), 2 * FLOOR_SAMPLES)
        negative = (query_labels[i] != gallery_labels[j]) & ~(self_match & (i == j))
        i, j = i[negative][:FLOOR_SAMPLES], j[negative][:FLOOR_SAMPLES]
        scores = np.concatenate(
            [np.einsum("nd,nd->n", queries[i[a : a + 8192]], gallery[j[a : a + 8192]]) for a in range(0, len(i), 8192)]
        )
        if len(scores) >= FLOOR_SAMPLES // 2:
            self.floor = float(np.quantile(scores, 1.0 - 2.0 * self.max_fmr))
            self._estimated = True

    def chunk(self, scores: np.ndarray, ptr: np.ndarray, cols: np.ndarray):
        """On a chunk's similarities ``[B, M]`` (own entries -inf) and positives (CSR ``ptr`` /
        ``cols``): its positive scores, its negatives above the floor, its histogram counts and
        its number of negatives. Overwrites the positives' entries with -inf."""
        rows = np.repeat(np.arange(len(scores)), np.diff(ptr))
        positives = scores[rows, cols]
        scores[rows, cols] = -np.inf  # what is left finite: the chunk's negatives
        flat = scores.reshape(-1)
        above = flat[np.flatnonzero(flat >= max(self.floor, float(np.finfo(scores.dtype).min)))]
        sample = scores[:, :: self.stride]
        sample = sample[sample > -np.inf]
        bins = ((sample - self.edges[0]) / self._bin_width).astype(np.int64)
        counts = np.bincount(np.clip(bins, 0, len(self.edges) - 2), minlength=len(self.edges) - 1)
        negatives = scores.size - len(positives) - (len(scores) if self.self_match else 0)
        return positives, above, counts, len(sample), negatives

    def add(self, part) -> None:
        """Take one chunk's result (in any order; called from one thread)."""
        positives, above, counts, sampled, negatives = part
        self._positives.append(positives)
        self._histogram += counts
        self._sampled += sampled
        self.num_negatives += negatives
        above = above[above >= self.floor]
        if len(above):
            self._tail.append(above)
            self._tail_size += len(above)
        if self._tail_size >= 2 * self.keep:
            self._compact()

    def result(self) -> PairScores:
        tail = np.sort(self._compact()) if self._tail else np.zeros(0)
        scale = self.num_negatives / self._sampled if self._sampled else 0.0
        dtype = tail.dtype if len(tail) else np.float32
        max_fmr = self.max_fmr
        if self._estimated and len(tail) < min(self.keep, self.num_negatives):  # the estimate was too high
            max_fmr = (len(tail) - 1) / self.num_negatives  # exact below it: all negatives above the floor are kept
        return PairScores(
            positives=np.sort(np.concatenate(self._positives)).astype(dtype) if self._positives else np.zeros(0, dtype),
            top_negatives=tail,
            num_negatives=int(self.num_negatives),
            max_fmr=max_fmr,
            histogram=self._histogram * scale,
            edges=self.edges,
            hamming_dim=self.hamming_dim,
        )

    def _compact(self) -> np.ndarray:
        """Keep the ``keep`` highest negatives (unordered) and raise the floor to the lowest of them."""
        tail = np.concatenate(self._tail)
        if len(tail) > self.keep:
            tail = np.partition(tail, len(tail) - self.keep)[len(tail) - self.keep :]
            self.floor = float(tail[0])  # the partition's pivot: the lowest kept
        self._tail, self._tail_size = [tail], len(tail)
        return tail
