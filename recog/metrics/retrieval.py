"""Ranking features (``rank``) and their retrieval metrics (recall@K, precision@K, mAP, mINP), in NumPy.

Conventions
-----------
* Similarity is the inner product (larger = closer); normalise the features first for cosine.
  Binary codes (``hamming_metrics``) rank by Hamming distance (smaller = closer).
* A query's ranking is the gallery sorted by similarity, descending; equal similarities are
  ordered by gallery index, lower first (+0.0 and -0.0 are equal). The rank of an item is the
  number of items before it.
* Without a gallery (query set == gallery, the SOP protocol) each query's own entry is removed
  from its ranking: the ranking has M - 1 entries and the other items keep their relative order.
* A positive is a gallery item with the query's label. Queries without any positive in their
  ranking are left out of every average and counted in ``num_queries_without_positive``.

``rank`` ranks the gallery once for every query into a ``RetrievalResults``
(``recog.metrics.results``); ``retrieval_metrics`` and ``hamming_metrics`` read the metrics off
its positives' ranks (``recog.metrics.ranks``, where the metric names are defined). The ranking
engine, exact in blocks and threads, is ``recog.metrics._ranking``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from numbers import Integral, Real

import numpy as np

from recog.metrics._ranking import positive_ranks
from recog.metrics._topk import top_k_rows
from recog.metrics.binary import check_bits, signed_codes
from recog.metrics.pairs import PairCollector
from recog.metrics.ranks import check_recall_at
from recog.metrics.results import RetrievalResults, check_paths

__all__ = ["format_metrics_table", "hamming_metrics", "rank", "retrieval_metrics"]

EMPTY_DISTANCE = 2**31 - 1  # the Hamming distance of an empty place


def rank(
    query_features,
    query_labels=None,
    gallery_features=None,
    gallery_labels=None,
    *,
    k: int = 0,
    binary: bool = False,
    block_size: int = 1024,
    query_paths=None,
    gallery_paths=None,
    pairs: float | None = None,
) -> RetrievalResults:
    """Rank the gallery for every query, once.

    Args:
        query_features: [N, D] float features, or with ``binary`` 0/1 bits (bool or integers).
        query_labels: [N] labels, or None (then no positives: no metrics).
        gallery_features, gallery_labels: [M, D] and [M] (labels may be None); gallery None:
            query == gallery, each query's own entry left out (labels then the queries').
        k: top places kept per query (0: none, for metrics alone).
        binary: rank 0/1 bit codes by Hamming distance.
        block_size: queries per block of work (results do not depend on it; see
            ``recog.metrics.retrieval_metrics`` for memory).
        query_paths, gallery_paths: image paths carried along for pictures and JSON rows.
        pairs: collect the pair-score distributions (``recog.metrics.pairs``), exact for
            thresholds at FMR up to this value (needs labels); None: not collected.

    Raises:
        ValueError: malformed inputs (shapes, non-finite features, labels that cannot be compared).
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    block_size = check_block_size(block_size)
    queries, q_labels = check_set(query_features, query_labels, "query", binary)
    self_match = gallery_features is None
    if self_match:
        if gallery_labels is not None:
            raise ValueError("gallery labels without gallery features: give both, or neither (query == gallery)")
        gallery, g_labels, gallery_paths = None, q_labels, query_paths
    else:
        gallery, g_labels = check_set(gallery_features, gallery_labels, "gallery", binary)
        if gallery.shape[1] != queries.shape[1]:
            what = "code lengths" if binary else "feature sizes"
            raise ValueError(f"query and gallery {what} differ: {queries.shape[1]} vs {gallery.shape[1]}")
    labelled = q_labels is not None and g_labels is not None
    collector = None
    if pairs is not None:
        if not labelled:
            raise ValueError("pair scores need labels on the queries and the gallery")
        m = len(queries if gallery is None else gallery)
        bound = _norm(queries) * _norm(queries if gallery is None else gallery)  # |score| <= |q| |g|
        collector = PairCollector(
            len(queries) * m - (len(queries) if self_match else 0),
            bound,
            self_match,
            max_fmr=pairs,
            hamming_dim=queries.shape[1] if binary else None,
        )
        collector.start_above(queries, q_labels, gallery, g_labels)

    def on_chunk(scores, ptr, cols):  # in the ranking's threads, on each chunk of rows
        top = top_k_rows(scores, k) if k else None
        return top, collector.chunk(scores, ptr, cols) if collector else None  # the latter overwrites positives

    ptrs, ranks, tops = [np.zeros(1, np.int64)], [], []
    extras = on_chunk if k or collector else None  # metrics alone: the bare ranking
    for _, ptr, block_ranks, *parts in positive_ranks(
        queries, q_labels if labelled else None, gallery, g_labels if labelled else None, block_size, extras
    ):
        ptrs.append(ptr[1:] + ptrs[-1][-1])
        ranks.append(block_ranks)
        for top, chunk_pairs in parts[0] if parts else []:
            if top is not None:
                tops.append(top)
            if chunk_pairs is not None:
                collector.add(chunk_pairs)
    n = len(queries)
    if tops:
        indices = np.concatenate([t[0] for t in tops])
        scores = np.concatenate([t[1] for t in tops])
    else:
        indices, scores = np.zeros((n, 0), np.int64), np.zeros((n, 0), queries.dtype)
    if binary:  # inner products of +-1 codes are D - 2 * Hamming distance
        empty = indices < 0
        scores = ((queries.shape[1] - np.where(empty, 0, scores)) / 2).astype(np.int32)
        scores[empty] = EMPTY_DISTANCE
    return RetrievalResults(
        scores,
        indices,
        binary,
        gallery_paths=check_paths(gallery_paths, len(queries if gallery is None else gallery)),
        gallery_labels=g_labels,
        query_paths=query_paths,
        query_labels=q_labels,
        positive_ptr=np.concatenate(ptrs) if labelled else None,
        positive_ranks=(np.concatenate(ranks) if ranks else np.zeros(0, np.int64)) if labelled else None,
        exclude_self=self_match,
        pairs=None if collector is None else collector.result(),
    )


def _norm(features: np.ndarray) -> float:
    """The largest row norm of ``features``."""
    return float(np.sqrt(np.einsum("ij,ij->i", features, features, dtype=np.float64).max())) if len(features) else 0.0


def check_set(features, labels, name: str, binary: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Features as a C-contiguous float array (float32 at least; +-1 codes for ``binary`` bits) and
    labels as an array (or None); ``ValueError`` naming the problem otherwise."""
    if binary:
        features = signed_codes(check_bits(features, f"{name} codes"))
    features = np.asarray(features)
    if features.ndim != 2 or not np.issubdtype(features.dtype, np.floating):
        raise ValueError(f"{name} features must be a float [N, D] array, got {features.dtype} {features.shape}")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (len(features),):
            raise ValueError(f"{name} labels must have shape ({len(features)},), got {labels.shape}")
    if not np.isfinite(features).all():
        raise ValueError(f"{name} features contain inf or nan")
    if name == "query" and len(features) == 0:
        raise ValueError("there are no queries")
    return np.ascontiguousarray(features, dtype=np.result_type(features, np.float32)), labels


def check_block_size(block_size: int) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    return int(block_size)


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
    if (gallery_features is None) != (gallery_labels is None):
        raise ValueError("give both gallery_features and gallery_labels, or neither")
    if query_labels is None:
        raise ValueError("query labels are needed for retrieval metrics")
    check_recall_at(recall_at)
    results = rank(query_features, query_labels, gallery_features, gallery_labels, block_size=block_size)
    return results.metrics(recall_at)


def hamming_metrics(
    query_codes,
    query_labels,
    gallery_codes=None,
    gallery_labels=None,
    recall_at: Iterable[int] = (1, 5, 10),
    block_size: int = 1024,
) -> dict[str, float | int]:
    """Recall@K, mAP and mINP of ranking the gallery by Hamming distance to each query.

    Same keys, conventions and errors as ``retrieval_metrics``: the ranking is by Hamming
    distance ascending, equal distances ordered by gallery index (lower first); with no gallery
    (query set == gallery) each query's own entry is removed; queries without a positive are
    left out of the averages and counted in ``num_queries_without_positive``.

    Args:
        query_codes: [N, D] bits (0/1; bool or any integer dtype), e.g. from ``binarize``.
        query_labels: [N] labels.
        gallery_codes, gallery_labels: [M, D] and [M], or both None.
        recall_at, block_size: as for ``retrieval_metrics``.

    Implementation: with bits mapped to +-1, the inner product is ``D - 2 * hamming``, a
    strictly decreasing function of the distance and an exact integer in floating point, so
    ranking the +-1 codes by inner product gives exactly the Hamming ranking and its tie order.
    Memory is 4 bytes per bit of the codes (8 beyond 2**24 bits).
    """
    if (gallery_codes is None) != (gallery_labels is None):
        raise ValueError("give both gallery_codes and gallery_labels, or neither")
    check_recall_at(recall_at)
    results = rank(query_codes, query_labels, gallery_codes, gallery_labels, binary=True, block_size=block_size)
    return results.metrics(recall_at)


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
