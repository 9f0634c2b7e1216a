"""The top k items of rows of similarities, exactly, without sorting whole rows.

Order: similarity descending, equal similarities by lower column (the ranking of
``recog.metrics.retrieval``); ``-inf`` entries (a query's own entry) are never results.

Method: a strided sample of each row (every ``stride``-th column) is a subset of the row, so its
k-th largest value is reached by at least k items of the row: those items (the candidates, about
``k * stride`` per row) hold the row's top k. They are sorted as packed uint64 keys (row, value
descending, column ascending; float32) or by a three-key lexsort (float64), and each row keeps its
first k. The stride balances the sample's partition (``M / stride`` per row) against the sort of
the candidates (``k * stride`` per row).
"""

from __future__ import annotations

import math

import numpy as np

from recog.metrics._ranking import _ROW_COL_BITS, _packed_keys

# Measured costs (ns, one core) of partitioning one sampled value and of sorting one candidate.
_PARTITION_COST, _CANDIDATE_COST = 15.0, 40.0


def top_k_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(indices [G, k] int64, values [G, k])`` of the k best columns of each row of ``scores``.

    scores: [G, M] float32/float64, finite or ``-inf`` (never a result). Places past a row's
    finite entries have index -1 and value ``-inf``.
    """
    g, m = scores.shape
    indices = np.full((g, k), -1, dtype=np.int64)
    values = np.full((g, k), -np.inf, dtype=scores.dtype)
    if k < 1 or g == 0 or m == 0:
        return indices, values
    take = min(k, m)
    stride = max(1, min(round(math.sqrt(m * _PARTITION_COST / (take * _CANDIDATE_COST))), m // take))
    sample = scores[:, ::stride]
    kth = np.partition(sample, sample.shape[1] - take, axis=1)[:, sample.shape[1] - take]
    # A -inf k-th value (fewer than k finite entries sampled): every finite entry is a candidate.
    lowest = np.maximum(kth, np.finfo(scores.dtype).min)
    flat = np.flatnonzero(scores >= lowest[:, None])  # row-major: rows, then columns ascending
    rows = flat // m
    per_row = np.bincount(rows, minlength=g)
    col_bits = max(1, (m - 1).bit_length())
    if scores.dtype == np.float32 and max(1, (g - 1).bit_length()) + col_bits <= _ROW_COL_BITS:
        keys = _packed_keys(flat, scores.reshape(-1)[flat], m, col_bits, per_row)
        keys.sort()
        rows = (keys >> np.uint64(32 + col_bits)).astype(np.int64)
        cols = (keys & np.uint64((1 << col_bits) - 1)).astype(np.int64)
    else:
        order = np.lexsort((flat, -scores.reshape(-1)[flat], rows))
        rows, cols = rows[order], flat[order] - rows[order] * m
    place = np.arange(len(rows)) - np.repeat(np.cumsum(per_row) - per_row, per_row)  # 0-based within its row
    keep = place < k
    rows, cols, place = rows[keep], cols[keep], place[keep]
    indices[rows, place] = cols
    values[rows, place] = scores[rows, cols]
    return indices, values
