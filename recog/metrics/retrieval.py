"""Retrieval metrics (recall@K, precision@K, mAP, mINP) computed blockwise in NumPy.

Conventions
-----------
* Similarity is the inner product (larger = closer); normalise the features first for cosine.
* A query's ranking is the gallery sorted by similarity, descending; equal similarities are
  ordered by gallery index, lower first (+0.0 and -0.0 are equal). The rank of an item is the
  number of items before it.
* Without a gallery (query set == gallery, the SOP protocol) each query's own entry is removed
  from its ranking: the ranking has M - 1 entries and the other items keep their relative order.
* A positive is a gallery item with the query's label. Queries without any positive in their
  ranking are left out of every average and counted in ``num_queries_without_positive``.

The ranking engine (the positives' exact ranks, in blocks and threads) is ``recog.metrics._ranking``.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from numbers import Integral, Real

import numpy as np

from recog.metrics._ranking import positive_ranks

__all__ = ["format_metrics_table", "positive_ranks", "retrieval_metrics"]


def retrieval_metrics(
    query_features,
    query_labels,
    gallery_features=None,
    gallery_labels=None,
    recall_at: Iterable[int] = (1, 5, 10),
    block_size: int = 1024,
) -> dict[str, float | int]:
    """Recall@K, Precision@K, mAP and mINP of ranking the gallery by inner product for every query.

    Args:
        query_features: [N, D] float features (float32 or float64).
        query_labels: [N] labels (one sortable type, e.g. integers or strings).
        gallery_features, gallery_labels: [M, D] and [M]; both None for query == gallery, in
            which case each query's own entry is removed from its ranking.
        recall_at: the K values of ``recall_at_K``.
        block_size: queries per block of work; results are exactly the same for any block
            size. Below 512 it also caps the rows of similarities each thread holds (at a
            cost in speed: products are always of 512 rows); memory is otherwise about
            threads * 512 * M similarities plus the ranking's temporaries (module docstring).

    Returns:
        ``recall_at_K`` (fraction of queries with a positive in their top K) and ``precision_at_K``
        (mean fraction of positives among the top K; K counts even past the ranking's end) for each K, ``mAP``
        (AP = mean over the positives of the precision at the positive's rank), ``mINP``
        (INP = number of positives / 1-based rank of the last positive), ``num_queries`` and
        ``num_queries_without_positive``. The float metrics average over the queries that have
        at least one positive; ties are broken by lower gallery index (see module docstring).

    Raises:
        ValueError: on malformed inputs, or when no query has a positive.
    """
    ks = _check_recall_at(recall_at)
    block_size = _check_block_size(block_size)
    queries, q_labels = _check_set(query_features, query_labels, "query")
    self_match = gallery_features is None and gallery_labels is None
    if self_match:
        gallery, g_labels = None, None
    elif gallery_features is None or gallery_labels is None:
        raise ValueError("give both gallery_features and gallery_labels, or neither")
    else:
        gallery, g_labels = _check_set(gallery_features, gallery_labels, "gallery")
        if gallery.shape[1] != queries.shape[1]:
            raise ValueError(f"query and gallery feature sizes differ: {queries.shape[1]} vs {gallery.shape[1]}")

    n = len(queries)
    first_rank = np.full(n, -1, dtype=np.int64)  # -1: no positive
    ap = np.zeros(n, dtype=np.float64)
    inp = np.zeros(n, dtype=np.float64)
    hits = np.zeros((n, len(ks)), dtype=np.int64)  # positives within the top K
    for start, ptr, ranks in positive_ranks(queries, q_labels, gallery, g_labels, block_size):
        stop = start + len(ptr) - 1
        first_rank[start:stop], ap[start:stop], inp[start:stop], hits[start:stop] = _query_stats(ptr, ranks, ks)

    valid = first_rank >= 0
    if not valid.any():
        raise ValueError(
            f"none of the {n} queries has a positive (a gallery item with the same label"
            + (", other than itself" if self_match else "")
            + "): retrieval metrics are undefined"
        )
    return summarize_query_stats(first_rank, ap, inp, hits, ks)


def summarize_query_stats(first_rank: np.ndarray, ap: np.ndarray, inp: np.ndarray, hits: np.ndarray, ks) -> dict:
    """The metrics dict from per-query statistics (``first_rank`` -1 for a query without positives,
    which the means leave out): ``first_rank`` [N] int, ``ap`` / ``inp`` [N] float, ``hits`` [N, len(ks)]
    positives within each top K."""
    valid = first_rank >= 0
    n = len(first_rank)
    metrics: dict[str, float | int] = {f"recall_at_{k}": float(np.mean(first_rank[valid] < k)) for k in ks}
    metrics.update({f"precision_at_{k}": float(np.mean(hits[valid, j] / k)) for j, k in enumerate(ks)})
    metrics["mAP"] = float(np.mean(ap[valid]))
    metrics["mINP"] = float(np.mean(inp[valid]))
    metrics["num_queries"] = int(n)
    metrics["num_queries_without_positive"] = int(n - valid.sum())
    return metrics


def format_metrics_table(metrics: Mapping[str, object]) -> str:
    """Two aligned columns, metric name and value (floats with 4 decimals, ints as is)."""

    def fmt(value: object) -> str:
        if isinstance(value, Real) and not isinstance(value, Integral):
            return f"{float(value):.4f}"
        return str(value)

    rows = [("metric", "value")] + [(str(k), fmt(v)) for k, v in metrics.items()]
    name_width = max(len(name) for name, _ in rows)
    value_width = max(len(value) for _, value in rows)
    rows.insert(1, ("-" * name_width, "-" * value_width))
    return "\n".join(f"{name:<{name_width}}  {value:>{value_width}}" for name, value in rows)


def _query_stats(ptr: np.ndarray, ranks: np.ndarray, ks: list[int]):
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


def _check_set(features, labels, name: str) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features)
    labels = np.asarray(labels)
    if features.ndim != 2 or not np.issubdtype(features.dtype, np.floating):
        raise ValueError(f"{name} features must be a float [N, D] array, got {features.dtype} {features.shape}")
    if labels.shape != (len(features),):
        raise ValueError(f"{name} labels must have shape ({len(features)},), got {labels.shape}")
    if not np.isfinite(features).all():
        raise ValueError(f"{name} features contain inf or nan")
    if name == "query" and len(features) == 0:
        raise ValueError("there are no queries")
    features = np.ascontiguousarray(features, dtype=np.result_type(features, np.float32))
    return features, labels


def _check_recall_at(recall_at: Iterable[int]) -> list[int]:
    try:
        ks = [operator.index(k) for k in recall_at]
    except TypeError:
        raise ValueError(f"recall_at must be positive integers, got {recall_at!r}") from None
    if ks and min(ks) < 1:
        raise ValueError(f"recall_at must be positive integers, got {recall_at!r}")
    return list(dict.fromkeys(ks))


def _check_block_size(block_size: int) -> int:
    try:
        block_size = operator.index(block_size)
    except TypeError:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}") from None
    if block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    return block_size
