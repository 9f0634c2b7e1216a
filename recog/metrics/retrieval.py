"""Retrieval metrics (recall@K, precision@K, mAP, mINP) computed blockwise in NumPy.

Conventions
-----------
* Similarity is the inner product (larger = closer); normalise the features first for cosine.
* A query's ranking is the gallery sorted by similarity, descending; equal similarities are
  ordered by gallery index, lower first. The rank of an item is the number of items before it.
* Without a gallery (query set == gallery, the SOP protocol) each query's own entry is removed
  from its ranking: the ranking has M - 1 entries and the other items keep their relative order.
* A positive is a gallery item with the query's label. Queries without any positive in their
  ranking are left out of every average and counted in ``num_queries_without_positive``.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from numbers import Integral, Real

import numpy as np

# Query rows are multiplied with the gallery in fixed-shape, index-aligned chunks of this many
# rows, because BLAS rounding depends on the shape of the product and on a row's place in it:
# a query's similarities are then bit-identical whatever block it is processed in.
_SCORE_CHUNK = 128


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
        query_labels: [N] labels.
        gallery_features, gallery_labels: [M, D] and [M]; both None for query == gallery, in
            which case each query's own entry is removed from its ranking.
        recall_at: the K values of ``recall_at_K``.
        block_size: queries ranked at a time; memory is O((block_size + 128) * M). Results are
            exactly the same for any block size.

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
        gallery, g_labels = queries, q_labels
    elif gallery_features is None or gallery_labels is None:
        raise ValueError("give both gallery_features and gallery_labels, or neither")
    else:
        gallery, g_labels = _check_set(gallery_features, gallery_labels, "gallery")
        if gallery.shape[1] != queries.shape[1]:
            raise ValueError(
                f"query and gallery feature sizes differ: {queries.shape[1]} vs {gallery.shape[1]}"
            )
        dtype = np.result_type(queries, gallery)
        queries, gallery = queries.astype(dtype, copy=False), gallery.astype(dtype, copy=False)

    n = len(queries)
    first_rank = np.full(n, -1, dtype=np.int64)  # -1: no positive
    ap = np.zeros(n, dtype=np.float64)
    inp = np.zeros(n, dtype=np.float64)
    hits = np.zeros((n, len(ks)), dtype=np.int64)  # positives within the top K
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        scores = _score_rows(queries, gallery, start, stop)  # [B, M]
        positive = q_labels[start:stop, None] == g_labels[None, :]  # [B, M]
        if self_match:
            rows = np.arange(stop - start)
            # Scores are finite, so a -inf self entry is ranked last and shifts no other rank:
            # the same as removing it.
            scores[rows, rows + start] = -np.inf
            positive[rows, rows + start] = False
        sorted_scores = np.sort(scores, axis=1)
        for b in range(stop - start):
            cols = np.flatnonzero(positive[b])
            if cols.size == 0:
                continue
            ranks = _positive_ranks(scores[b], sorted_scores[b], cols)  # 0-based, ascending
            i = start + b
            first_rank[i] = ranks[0]
            ap[i] = np.mean(np.arange(1, ranks.size + 1) / (ranks + 1))
            inp[i] = ranks.size / (ranks[-1] + 1)
            hits[i] = np.searchsorted(ranks, ks, side="left")

    valid = first_rank >= 0
    if not valid.any():
        raise ValueError(
            f"none of the {n} queries has a positive (a gallery item with the same label"
            + (", other than itself" if self_match else "")
            + "): retrieval metrics are undefined"
        )
    metrics: dict[str, float | int] = {
        f"recall_at_{k}": float(np.mean(first_rank[valid] < k)) for k in ks
    }
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


def _score_rows(queries: np.ndarray, gallery: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Similarities [stop - start, M] of queries[start:stop] with the whole gallery.

    Always computed as zero-padded [_SCORE_CHUNK, D] @ [D, M] products aligned at multiples of
    _SCORE_CHUNK, so that every row's rounding is independent of start and stop.
    """
    out = np.empty((stop - start, len(gallery)), dtype=queries.dtype)
    chunk = np.zeros((_SCORE_CHUNK, queries.shape[1]), dtype=queries.dtype)
    for c in range(start - start % _SCORE_CHUNK, stop, _SCORE_CHUNK):
        rows = queries[c : c + _SCORE_CHUNK]
        chunk[: len(rows)] = rows
        chunk[len(rows) :] = 0
        scores = chunk @ gallery.T
        lo, hi = max(c, start), min(c + _SCORE_CHUNK, stop)
        out[lo - start : hi - start] = scores[lo - c : hi - c]
    if not np.isfinite(out).all():
        raise ValueError("similarities are not all finite (inf or nan in the features?)")
    return out


def _positive_ranks(row: np.ndarray, sorted_row: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Ascending 0-based ranks of the items ``cols`` in the ranking of one query.

    row: [M] similarities; sorted_row: the same, sorted ascending. The rank of an item is the
    number of items with a higher score, plus those with an equal score and a lower index.
    """
    values = row[cols]
    higher_or_equal = len(row) - np.searchsorted(sorted_row, values, side="left")
    higher = len(row) - np.searchsorted(sorted_row, values, side="right")
    if np.all(higher_or_equal - higher == 1):  # no tie involves a positive: rank = # higher
        return np.sort(higher)
    # Ties: the exact order from a stable sort of the row (score descending, then index).
    order = np.argsort(-row, kind="stable")
    position = np.empty(len(row), dtype=np.int64)
    position[order] = np.arange(len(row))
    return np.sort(position[cols])


def _check_set(features, labels, name: str) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features)
    labels = np.asarray(labels)
    if features.ndim != 2 or not np.issubdtype(features.dtype, np.floating):
        raise ValueError(
            f"{name} features must be a float [N, D] array, got {features.dtype} {features.shape}"
        )
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
