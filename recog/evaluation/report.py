"""What an evaluation leaves beside its metrics: pictures of its results and its threshold.

``retrieval.png`` (the first queries and their top results), ``worst_queries.png`` (the queries of
lowest AP, each captioned with it), both drawn from the eval's own post-processed
``RetrievalResults``; ``pair_scores.png`` (``recog.evaluation.calibration``) and ``threshold.json``
(``recog.inference.threshold``). Training writes them for the best model, ``stage=eval`` for its model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from recog.evaluation.calibration import save_pair_scores_plot
from recog.inference import threshold as threshold_file
from recog.inference.threshold import Threshold
from recog.metrics import RetrievalResults
from recog.search import save_retrieval_grid

log = logging.getLogger(__name__)

PICTURE_K = 5  # results per query in the pictures
RETRIEVAL_PICTURE, WORST_PICTURE = "retrieval.png", "worst_queries.png"  # the first queries; lowest AP
PAIR_SCORES_PICTURE = "pair_scores.png"  # the pair-score histograms and the DET curve
REPORT_FILES = (RETRIEVAL_PICTURE, WORST_PICTURE, PAIR_SCORES_PICTURE, threshold_file.FILE_NAME)


def save_picture(
    results: RetrievalResults, path, queries: int = 8, k: int = PICTURE_K, worst: bool = False
) -> Path | None:
    """PNG grid of queries and their top-k results: the first ``queries`` queries, or with ``worst``
    those of lowest AP (captioned with it; queries without a positive are not among them). None,
    after a warning or a log line, when there is nothing to draw or it cannot be written: a
    picture never ends a run."""
    if worst:
        rows = results.worst(queries)
        if not len(rows):
            log.info("no query has a positive: no picture of the worst queries")
            return None
    else:
        rows = np.arange(min(queries, len(results)))
    shown = results.select(rows).top(k)
    captions = [f"AP {ap:.2f}" for ap in shown.average_precision()] if worst else None
    return save_retrieval_grid(
        shown.query_paths,
        shown.to_dicts(),
        path,
        k=k,
        query_labels=shown.query_labels.tolist(),
        query_captions=captions,
    )


def save_report(results: RetrievalResults, threshold: Threshold | None, directory) -> list[Path]:
    """``REPORT_FILES`` of an evaluation in ``directory`` (``threshold.json`` only with a threshold);
    returns the files written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = [
        save_picture(results, directory / RETRIEVAL_PICTURE),
        save_picture(results, directory / WORST_PICTURE, worst=True),
        save_pair_scores_plot(results.pairs, threshold, directory / PAIR_SCORES_PICTURE),
    ]
    if threshold is not None:
        written.append(threshold_file.save(directory, threshold))
    return [path for path in written if path is not None]
