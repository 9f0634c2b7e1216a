"""Retrieval metrics as functions of the positives' ranks, and their names (defined here only).

A query's positives are the gallery items with its label; their 0-based ranks in the query's
ranking (ascending, CSR layout: query i has ``ranks[ptr[i]:ptr[i + 1]]``) determine every metric:

* ``recall_at_K``: 1 if a positive is within the top K, else 0;
* ``precision_at_K``: positives within the top K, divided by K (K counts past the ranking's end);
* ``mAP``: AP = mean over the positives of the precision at the positive's rank;
* ``mINP``: INP = number of positives / 1-based rank of the last positive.

Averages are over the queries with at least one positive; the others are counted in
``num_queries_without_positive``. All ranking metrics are higher-is-better.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable

import numpy as np

RANKING_METRICS = ("mAP", "mINP")  # besides recall_at_K and precision_at_K
COUNTS = ("num_queries", "num_queries_without_positive")


def metric_names(recall_at: Iterable[int]) -> list[str]:
    """The ranking metrics for ``recall_at`` (the Ks), all higher-is-better: recall_at_K and
    precision_at_K for each K, mAP, mINP. What ``trainer.monitor`` and ``sweep.objective`` may name."""
    ks = check_recall_at(recall_at)
    return [f"recall_at_{k}" for k in ks] + [f"precision_at_{k}" for k in ks] + list(RANKING_METRICS)


def query_stats(ptr: np.ndarray, ranks: np.ndarray, ks: list[int]):
    """Per-query statistics from the positives' ranks (CSR, ascending within a query).

    Returns [B] first rank (-1 without a positive), [B] AP, [B] INP and [B, len(ks)] the number
    of positives ranked within each top K (zeros without a positive).
    """
    counts = np.diff(ptr)
    b = len(counts)
    first = np.full(b, -1, dtype=np.int64)
    ap = np.zeros(b, dtype=np.float64)
    inp = np.zeros(b, dtype=np.float64)
    hits = np.zeros((b, len(ks)), dtype=np.int64)
    has = counts > 0
    if has.any():
        starts = ptr[:-1][has]
        first[has] = ranks[starts]
        nth = np.arange(len(ranks)) - np.repeat(ptr[:-1], counts) + 1  # 1-based within the query
        ap[has] = np.add.reduceat(nth / (ranks + 1), starts) / counts[has]
        inp[has] = counts[has] / (ranks[ptr[1:][has] - 1] + 1)
        if ks:
            within = (ranks[:, None] < np.asarray(ks)).astype(np.int64)
            hits[has] = np.add.reduceat(within, starts, axis=0)
    return first, ap, inp, hits


def summarize(ptr: np.ndarray, ranks: np.ndarray, recall_at: Iterable[int], self_match: bool = False) -> dict:
    """The metrics dict of the positives' ranks (CSR): ``metric_names(recall_at)`` plus ``COUNTS``.

    Raises ``ValueError`` when no query has a positive (``self_match``: the message says a query
    is not its own positive).
    """
    ks = check_recall_at(recall_at)
    first, ap, inp, hits = query_stats(ptr, ranks, ks)
    valid = first >= 0
    n = len(first)
    if not valid.any():
        raise ValueError(
            f"none of the {n} queries has a positive (a gallery item with the same label"
            + (", other than itself" if self_match else "")
            + "): retrieval metrics are undefined"
        )
    metrics: dict[str, float | int] = {f"recall_at_{k}": float(np.mean(first[valid] < k)) for k in ks}
    metrics.update({f"precision_at_{k}": float(np.mean(hits[valid, j] / k)) for j, k in enumerate(ks)})
    metrics["mAP"] = float(np.mean(ap[valid]))
    metrics["mINP"] = float(np.mean(inp[valid]))
    metrics["num_queries"] = int(n)
    metrics["num_queries_without_positive"] = int(n - valid.sum())
    return metrics


def check_recall_at(recall_at: Iterable[int]) -> list[int]:
    """The Ks as a list of distinct positive ints, in the given order (``ValueError`` otherwise)."""
    try:
        ks = [operator.index(k) for k in recall_at]
    except TypeError:
        raise ValueError(f"recall_at must be positive integers, got {recall_at!r}") from None
    if ks and min(ks) < 1:
        raise ValueError(f"recall_at must be positive integers, got {recall_at!r}")
    return list(dict.fromkeys(ks))
