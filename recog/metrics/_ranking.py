"""The ranking engine of ``recog.metrics.retrieval``: the exact 0-based ranks of every query's
positives, in blocks of queries, never a full ranking (conventions: ``recog.metrics.retrieval``).

(Over 300 lines: the method is explained beside the code, and the tie rule needs both halves.)

Method
------
Every metric is a function of the 0-based ranks of a query's positives; only those are computed,
exactly, never a full ranking. Parallel threads (one per core, BLAS single-threaded meanwhile)
each take a chunk of 512 queries: its similarities [512, M] (one matrix product), then per group
of 128 rows one of two exact methods:

* sorting the candidates, the items scoring at least the row's lowest positive (all that can
  rank before a positive): packed into uint64 keys (row, score descending, index ascending) and
  sorted, a positive's rank is its place among its row's candidates. Cheap when the positives
  rank high, as with a trained model.
* counting, for each positive, the items with a higher score and those with an equal score at a
  lower index: two passes over the row per positive. Cheap when the positives are few, whatever
  their ranks, as with an untrained model.

Each group takes the method of lower estimated cost; both give the same ranks. Memory per
thread: the chunk's similarities (512 * M floats) and the group's temporaries, about 40 bytes
per candidate or 6 bytes per similarity: at most about 45 * 128 * M bytes more.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

# Query rows are multiplied with the gallery in fixed-shape, index-aligned chunks of this many
# rows, because BLAS rounding depends on the shape of the product and on a row's place in it:
# a query's similarities are then bit-identical whatever block it is processed in.
_SCORE_CHUNK = 512
# Rows of a chunk ranked together: bounds the temporary arrays of the ranking.
_RANK_GROUP = 128
# Bits of a uint64 sort key left for the row and the column once the 32 bits of a float32 score are in.
_ROW_COL_BITS = 32
# Measured costs (ns, one core) that choose between sorting the candidates and counting; they
# only affect speed, never the ranks: per candidate with packed keys and with lexsort, per
# positive and gallery item when counting float32 and float64 scores.
_SORT_COST, _LEXSORT_COST = 40.0, 400.0
_COUNT_COST = {np.dtype(np.float32): 1.75, np.dtype(np.float64): 2.4}


def positive_ranks(
    queries: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray | None = None,
    gallery_labels: np.ndarray | None = None,
    block_size: int = 1024,
    on_chunk: Callable[[np.ndarray, np.ndarray, np.ndarray], Any] | None = None,
) -> Iterator[tuple]:
    """The 0-based ranks of every query's positives, one block of queries at a time.

    queries: [N, D] float32/float64 (finite, validated by the caller); query_labels: [N], or None
    (no positives); gallery, gallery_labels: [M, D] and [M], or both None for query == gallery
    (own entry removed). Yields ``(start, ptr, ranks)`` per block of queries ``start .. start +
    len(ptr) - 2``: query ``start + i`` has the ranks ``ranks[ptr[i]:ptr[i + 1]]``, ascending (CSR
    layout). While it runs, BLAS is limited to one thread process-wide (threadpoolctl).

    ``on_chunk(scores, ptr, cols)``, if given, runs in the worker thread on every chunk of rows
    once its positives are ranked: ``scores`` [B, M] its similarities (own entries -inf; a buffer
    reused afterwards: copy what is kept; the function may overwrite it), ``ptr`` / ``cols`` its
    positives' gallery indices (CSR). Each block then yields a 4th item, the list of the
    function's results for its chunks, in order.
    """
    self_match = gallery is None
    if self_match:
        gallery, gallery_labels = queries, query_labels
    else:
        dtype = np.result_type(queries, gallery)
        queries, gallery = queries.astype(dtype, copy=False), gallery.astype(dtype, copy=False)
    n, m = len(queries), len(gallery)
    labelled = query_labels is not None and gallery_labels is not None
    try:
        by_label = np.argsort(gallery_labels, kind="stable") if labelled else None
    except TypeError as err:
        raise ValueError(f"gallery labels cannot be sorted: {err}") from None
    sorted_labels = gallery_labels[by_label] if labelled else None
    # |q . g| <= D * max|q| * max|g| bounds every partial sum of the product: below the largest
    # float, no similarity can overflow and checking each block is not needed.
    bound = queries.shape[1] * _max_abs(queries) * _max_abs(gallery)
    check_finite = not bound < float(np.finfo(queries.dtype).max)
    buffers = threading.local()  # each thread's [<= _SCORE_CHUNK, M] similarities, reused

    def rank_rows(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """ptr, ranks (CSR) of queries lo..hi-1, within one score chunk."""
        if getattr(buffers, "scores", None) is None:
            buffers.scores = np.empty((min(_SCORE_CHUNK, block_size, n), m), dtype=queries.dtype)
        with np.errstate(over="ignore", invalid="ignore"):  # checked just below
            scores = _score_rows(queries, gallery, lo, hi, out=buffers.scores[: hi - lo])
        if check_finite and not np.isfinite(scores).all():
            raise ValueError("similarities are not all finite (the features are too large)")
        if labelled:
            ptr, cols = _positive_lists(query_labels[lo:hi], sorted_labels, by_label, lo if self_match else None)
        else:
            ptr, cols = np.zeros(hi - lo + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
        if self_match:
            own = np.arange(hi - lo)
            # Scores are finite, so a -inf own entry is ranked last and shifts no other rank, and
            # it is never a candidate: the same as removing it.
            scores[own, own + lo] = -np.inf
        ranks = np.empty(len(cols), dtype=np.int64)
        for a in range(0, hi - lo, _RANK_GROUP):
            z = min(a + _RANK_GROUP, hi - lo)
            ranks[ptr[a] : ptr[z]] = _rank_positives(scores[a:z], ptr[a : z + 1] - ptr[a], cols[ptr[a] : ptr[z]])
        if on_chunk is None:
            return ptr, ranks
        return ptr, ranks, on_chunk(scores, ptr, cols)

    # Parallel threads each multiply and rank a chunk of rows, with single-threaded BLAS: every
    # core does both kinds of work, and no BLAS thread spins idle while NumPy ranks.
    blocks = [(start, min(start + block_size, n)) for start in range(0, n, block_size)]
    chunks = [_chunk_cuts(start, stop) for start, stop in blocks]
    threads = _thread_count()
    with contextlib.ExitStack() as stack:  # closed in reverse: pending work, the threads, BLAS
        stack.enter_context(_single_threaded_blas())
        pool = stack.enter_context(ThreadPoolExecutor(threads))
        units = [c for cuts in chunks for c in zip(cuts[:-1], cuts[1:])]
        done = stack.enter_context(contextlib.closing(_in_order(pool, rank_rows, units, 2 * threads)))
        for (start, _), cuts in zip(blocks, chunks):
            parts = [next(done) for _ in cuts[1:]]
            counts = np.concatenate([np.diff(part[0]) for part in parts])
            block = start, np.concatenate([[0], np.cumsum(counts)]), np.concatenate([part[1] for part in parts])
            yield block if on_chunk is None else (*block, [part[2] for part in parts])


def _chunk_cuts(start: int, stop: int) -> list[int]:
    """start, the multiples of _SCORE_CHUNK in between, stop: the block cut at score chunks."""
    return [start, *range(start - start % _SCORE_CHUNK + _SCORE_CHUNK, stop, _SCORE_CHUNK), stop]


def _in_order(pool: ThreadPoolExecutor, fn, args: list[tuple], window: int) -> Iterator:
    """fn(*a) for a in args, run in the pool at most ``window`` at a time, results in order."""
    pending: deque = deque()
    try:
        for a in args:
            pending.append(pool.submit(fn, *a))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # on an error or an abandoned generator: no more work
        for future in pending:
            future.cancel()


def _positive_lists(
    labels: np.ndarray, sorted_labels: np.ndarray, by_label: np.ndarray, own_start: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """The gallery indices of each query's positives, CSR: ``cols[ptr[i]:ptr[i + 1]]`` for query i.

    labels: [B] query labels; sorted_labels: [M] gallery labels sorted, ``by_label`` the stable
    argsort that sorts them. With ``own_start``, query i is gallery item own_start + i and is
    not its own positive.
    """
    try:
        lo = np.searchsorted(sorted_labels, labels, side="left")
        hi = np.searchsorted(sorted_labels, labels, side="right")
    except TypeError as err:
        raise ValueError(f"query and gallery labels cannot be compared: {err}") from None
    if labels.dtype.kind == "f":
        hi[np.isnan(labels)] = lo[np.isnan(labels)]  # nan equals nothing, as with ==
    counts = hi - lo
    owner = np.repeat(np.arange(len(labels)), counts)
    first = np.cumsum(counts) - counts
    cols = by_label[np.arange(len(owner)) + np.repeat(lo - first, counts)]
    if own_start is not None:
        keep = cols != owner + own_start
        cols, owner = cols[keep], owner[keep]
        counts = np.bincount(owner, minlength=len(labels))
    ptr = np.zeros(len(labels) + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    return ptr, cols


def _rank_positives(scores: np.ndarray, ptr: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """0-based ranks of the positives ``cols`` (CSR by ``ptr``) in the rankings of the rows of scores.

    scores: [G, M] C-contiguous similarities, own entries already -inf; ptr: [G + 1]; cols: [P]
    gallery indices. Returns [P] ranks in CSR layout, ascending within each row. The rank of an
    item is the number of items with a higher score, plus those with an equal score and a lower index.

    Two exact methods, whichever is estimated cheaper: sorting the candidates (the items scoring
    at least the row's lowest positive: few when the positives rank high) or counting, for each
    positive, the items ranked before it (passes over the row: few when there are few positives).
    """
    g, m = scores.shape
    counts = np.diff(ptr)
    has = counts > 0
    if not has.any():
        return np.empty(0, dtype=np.int64)
    rows = np.repeat(np.arange(g), counts)
    pos_scores = scores[rows, cols]
    lowest = np.full(g, np.inf, dtype=scores.dtype)  # +inf: no candidate in rows without a positive
    lowest[has] = np.minimum.reduceat(pos_scores, ptr[:-1][has])
    # Candidates: the items that can rank before some positive, and the positives themselves.
    candidates = scores >= lowest[:, None]
    col_bits = max(1, (m - 1).bit_length())
    packed = scores.dtype == np.float32 and max(1, (g - 1).bit_length()) + col_bits <= _ROW_COL_BITS
    if _prefer_sorting(np.count_nonzero(candidates), packed, len(cols) * m, scores.dtype):
        ranks = _rank_by_sorting(scores, candidates, rows, cols, pos_scores, col_bits if packed else None)
    else:
        ranks = _rank_by_counting(scores, ptr, rows, cols, pos_scores)
    return np.sort(rows * m + ranks) - rows * m


def _prefer_sorting(num_candidates: int, packed: bool, num_comparisons: int, dtype: np.dtype) -> bool:
    """Whether sorting the candidates is estimated cheaper than counting (positives x items)."""
    sort_cost = num_candidates * (_SORT_COST if packed else _LEXSORT_COST)
    return sort_cost <= num_comparisons * _COUNT_COST.get(dtype, max(_COUNT_COST.values()))


def _rank_by_sorting(scores, candidates, rows, cols, pos_scores, col_bits: int | None) -> np.ndarray:
    """Ranks of the positives (rows, cols, pos_scores: [P]) among the sorted candidates ([G, M] bool).

    col_bits: sort packed uint64 keys (float32 scores only), or None for a three-key lexsort.
    """
    g, m = scores.shape
    flat = np.flatnonzero(candidates)  # row-major: rows, then columns ascending
    bounds = np.searchsorted(flat, np.arange(g + 1) * m)  # row r's candidates: flat[bounds[r]:bounds[r + 1]]
    values = scores.reshape(-1)[flat]
    if col_bits is not None:
        keys = _packed_keys(flat, values, m, col_bits, np.diff(bounds))
        keys.sort()
        positive_keys = _packed_keys(rows * m + cols, pos_scores, m, col_bits, np.bincount(rows, minlength=g))
        place = np.searchsorted(keys, positive_keys)
    else:
        cand_rows = np.repeat(np.arange(g), np.diff(bounds))
        order = np.lexsort((flat, -values, cand_rows))  # flat orders the columns within a row
        place = np.empty_like(order)
        place[order] = np.arange(len(order))
        place = place[np.searchsorted(flat, rows * m + cols)]
    return place - bounds[rows]


def _rank_by_counting(scores, ptr, rows, cols, pos_scores) -> np.ndarray:
    """Ranks of the positives (rows, cols, pos_scores: [P], CSR by ptr) by counting, per positive,
    the higher scores and the equal ones at lower columns: two passes over [G, M] per positive slot."""
    g, m = scores.shape
    ranks = np.empty(len(cols), dtype=np.int64)
    slot = np.arange(len(cols)) - ptr[rows]  # the k-th positive of its row
    for k in range(int(slot.max()) + 1):
        sel = np.flatnonzero(slot == k)
        if len(sel) * 2 >= g:  # most rows: all of them, +inf (nothing is higher or equal) for the others
            threshold = np.full(g, np.inf, dtype=scores.dtype)
            threshold[rows[sel]] = pos_scores[sel]
            col = np.zeros(g, dtype=np.int64)
            col[rows[sel]] = cols[sel]
            sub, at = scores, rows[sel]
        else:
            threshold, col = pos_scores[sel], cols[sel]
            sub, at = scores[rows[sel]], np.arange(len(sel))
        higher = (sub > threshold[:, None]).view(np.uint8).sum(axis=1, dtype=np.int64)
        equal = np.flatnonzero(sub == threshold[:, None])  # the positive itself, and ties
        equal_rows = equal // m
        before = equal - equal_rows * m < col[equal_rows]
        higher += np.bincount(equal_rows[before], minlength=len(sub))
        ranks[sel] = higher[at]
    return ranks


def _packed_keys(flat: np.ndarray, values: np.ndarray, m: int, col_bits: int, per_row: np.ndarray) -> np.ndarray:
    """uint64 keys whose ascending order is (row ascending, value descending, column ascending).

    flat: [C] row * m + column, rows ascending, ``per_row[r]`` of them in row r; values: [C]
    float32, no nan. Layout: row | 32 value bits | col_bits column bits. The value bits are the
    ascending order-preserving bits of -value: a non-negative float's bits with the sign bit set,
    a negative float's bits all flipped (they decrease as the value increases).
    """
    bits = np.subtract(np.float32(0), values).view(np.int32)  # 0 - x: also turns -0.0 into +0.0
    keys = bits >> 31  # -1 for negative, else 0
    keys |= np.int32(-(2**31))
    keys ^= bits
    keys = keys.view(np.uint32).astype(np.uint64)
    keys <<= np.uint64(col_bits)
    keys += flat.astype(np.uint64, copy=False)
    # flat = row * m + column: add row << (32 + col_bits) - row * m to turn it into row | ... | column.
    r = np.arange(len(per_row), dtype=np.uint64)
    keys += np.repeat((r << np.uint64(32 + col_bits)) - r * np.uint64(m), per_row)
    return keys


def _score_rows(
    queries: np.ndarray, gallery: np.ndarray, start: int, stop: int, out: np.ndarray | None = None
) -> np.ndarray:
    """Similarities [stop - start, M] of queries[start:stop] with the whole gallery (into ``out``).

    Always computed as [_SCORE_CHUNK, D] @ [D, M] products aligned at multiples of
    _SCORE_CHUNK (zero-padded where the rows do not fill a chunk), so that every row's rounding
    is independent of start and stop.
    """
    if out is None:
        out = np.empty((stop - start, len(gallery)), dtype=queries.dtype)
    padded = None
    for c in range(start - start % _SCORE_CHUNK, stop, _SCORE_CHUNK):
        lo, hi = max(c, start), min(c + _SCORE_CHUNK, stop)
        # A whole chunk goes straight into out, except when the gallery is exactly one chunk:
        # numpy computes A @ A.T with a different BLAS routine (syrk) when both are the same memory.
        if lo == c and hi == c + _SCORE_CHUNK and len(gallery) != _SCORE_CHUNK:
            np.matmul(queries[c:hi], gallery.T, out=out[lo - start : hi - start])
            continue
        if padded is None:
            padded = np.zeros((_SCORE_CHUNK, queries.shape[1]), dtype=queries.dtype)
        rows = queries[c : c + _SCORE_CHUNK]
        padded[: len(rows)] = rows
        padded[len(rows) :] = 0
        out[lo - start : hi - start] = (padded @ gallery.T)[lo - c : hi - c]
    return out


@contextlib.contextmanager
def _single_threaded_blas():
    """BLAS limited to one thread (process-wide) for the duration, when threadpoolctl is there."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # then concurrent products share BLAS's threads: slower, same results
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _thread_count() -> int:
    """Worker threads: OMP_NUM_THREADS (recog sets it to the number of cores), at most the cores."""
    cores = os.cpu_count() or 1
    try:
        return max(1, min(cores, int(os.environ.get("OMP_NUM_THREADS", cores))))
    except ValueError:
        return cores


def _max_abs(a: np.ndarray) -> float:
    return float(max(a.max(), -a.min())) if a.size else 0.0
