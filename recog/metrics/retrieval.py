"""Retrieval metrics (recall@K, precision@K, mAP, mINP) of features, computed blockwise in NumPy.

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

Both functions rank once (``recog.metrics.results.rank``; the engine, exact in blocks and
threads, is ``recog.metrics._ranking``) and read the metrics off the positives' ranks
(``recog.metrics.ranks``, where the metric names are defined).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from numbers import Integral, Real

from recog.metrics.ranks import check_recall_at
from recog.metrics.results import rank

__all__ = ["format_metrics_table", "hamming_metrics", "retrieval_metrics"]


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
