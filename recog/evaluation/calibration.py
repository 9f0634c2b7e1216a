"""The decision threshold an evaluation calibrates, and the picture of its pair scores.

Every evaluation collects the scores of all positive and negative query-gallery pairs
(``recog.metrics.pairs``) and picks the threshold at ``eval.target_fmr``: its metrics (``threshold``,
``threshold_fmr``, ``threshold_fnmr``, the pair counts, the FNMR at FMR 1e-2 / 1e-3 / 1e-4) go with
the ranking metrics, and ``threshold_from_metrics`` turns them into the ``Threshold`` an export
carries (``recog.inference.threshold``), from an eval's own metrics or from the best model's in
``state.json``. ``save_pair_scores_plot`` draws the score histograms and the DET curve.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from recog.inference.threshold import Threshold
from recog.metrics.pairs import (
    MAX_TARGET_FMR,
    NEGATIVE_PAIRS,
    POSITIVE_PAIRS,
    REPORTED_FMRS,
    THRESHOLD,
    THRESHOLD_FNMR,
    PairScores,
    check_target_fmr,
)

__all__ = ["MAX_TARGET_FMR", "check_target_fmr", "save_pair_scores_plot", "threshold_from_metrics"]
from recog.utils import atomic

log = logging.getLogger(__name__)

PLOT_BINS = 100  # histogram bars drawn at most


def threshold_from_metrics(metrics: Mapping, target_fmr: float, binary: bool) -> Threshold | None:
    """The ``Threshold`` an evaluation's metrics describe (None when they have no threshold: no
    negative pairs, or an eval by an older recog)."""
    if not isinstance(metrics, Mapping) or THRESHOLD not in metrics:
        return None
    fnmr = metrics.get(THRESHOLD_FNMR)
    return Threshold(
        score=float(metrics[THRESHOLD]),
        target_fmr=float(target_fmr),
        fnmr=None if fnmr is None else float(fnmr),
        similarity="hamming" if binary else "inner_product",
        positive_pairs=int(metrics[POSITIVE_PAIRS]),
        negative_pairs=int(metrics[NEGATIVE_PAIRS]),
    )


def save_pair_scores_plot(pairs: PairScores, threshold: Threshold | None, path) -> Path | None:
    """``pair_scores.png``: the positive and negative pair-score histograms (density, log scale)
    with the threshold, and the DET curve (FNMR against FMR) with the reported operating points.
    None, after a warning, when it cannot be drawn or written: a picture never ends a run."""
    try:
        return _plot(pairs, threshold, Path(path))
    except Exception as error:  # noqa: BLE001 - never the end of a run
        log.warning("pair-score plot %s not written: %s", path, error)
        return None


def _plot(pairs: PairScores, threshold: Threshold | None, path: Path) -> Path:
    # A Figure of its own on the Agg canvas: no pyplot (its global figure list and backend choice).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    hamming = pairs.hamming_dim is not None

    def axis(scores):  # scores are +-1 inner products for codes: show Hamming distances
        return (pairs.hamming_dim - np.asarray(scores, float)) / 2 if hamming else np.asarray(scores, float)

    figure = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    # Fixed margins that fit the labels: laying them out (tight_layout) measures every text twice.
    figure.subplots_adjust(left=0.065, right=0.985, bottom=0.12, top=0.92, wspace=0.2)
    used = np.flatnonzero(pairs.histogram > 0)
    lo, hi = (used.min(), used.max() + 1) if len(used) else (0, len(pairs.histogram))
    if len(pairs.positives):
        lo = min(lo, max(0, int(np.searchsorted(pairs.edges, pairs.positives[0], side="right")) - 1))
        hi = max(hi, min(len(pairs.histogram), int(np.searchsorted(pairs.edges, pairs.positives[-1], side="left"))))
    step = max(1, -(-(hi - lo) // PLOT_BINS))  # adjacent bins merged: at most PLOT_BINS drawn
    hi = min(len(pairs.histogram), lo + step * -(-(hi - lo) // step))
    edges = pairs.edges[lo : hi + 1 : step]
    counts = np.add.reduceat(pairs.histogram[lo:hi], np.arange(0, hi - lo, step))[: len(edges) - 1]
    widths = np.diff(edges)
    negatives = counts / max(pairs.histogram.sum(), 1) / widths
    positives = np.histogram(pairs.positives, bins=edges)[0] / max(pairs.num_positives, 1) / widths
    centres = axis((edges[:-1] + edges[1:]) / 2)
    left.step(centres, negatives, where="mid", color="tab:red", label=f"negative pairs ({pairs.num_negatives:,})")
    left.step(centres, positives, where="mid", color="tab:green", label=f"positive pairs ({pairs.num_positives:,})")
    if threshold is not None:
        left.axvline(threshold.score, color="black", linestyle="--", label=f"threshold {threshold.score:.4g}")
    left.set_yscale("log")
    left.set_xlabel("Hamming distance" if hamming else "score (inner product)")
    left.set_ylabel("density")
    left.set_title("pair scores")
    left.legend(fontsize=8)

    fmr, fnmr = pairs.det_curve()
    keep = fmr > 0
    right.plot(fmr[keep], fnmr[keep], color="tab:blue")
    points = []
    for target in REPORTED_FMRS:
        if target * pairs.num_negatives >= 1 and pairs.num_positives:
            _, at_fmr, at_fnmr = pairs.threshold_at(target)
            right.plot([max(at_fmr, 1 / pairs.num_negatives)], [at_fnmr], "o", color="tab:blue")
            points.append(f"FNMR {at_fnmr:.4f} at FMR {target:g}")
    if points:
        right.text(0.03, 0.05, "\n".join(points), transform=right.transAxes, fontsize=8, va="bottom")
    right.set_xscale("log")
    right.set_ylim(0, 1)
    right.set_xlabel("FMR (false-match rate)")
    right.set_ylabel("FNMR (false-non-match rate)")
    right.set_title("DET curve" + (f" (threshold at FMR {threshold.target_fmr:g})" if threshold else ""))
    right.grid(True, alpha=0.3)
    for axes in (left, right):  # a line per decade reads as well; log minor ticks are half the drawing time
        axes.minorticks_off()
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=90)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(path, png.getvalue(), what="pair-score plot")
    return path
