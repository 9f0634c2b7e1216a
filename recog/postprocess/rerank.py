"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), on sparse neighbour graphs: memory and time grow with N * k, not N^2.

Definitions (the paper's, over the point set P: the queries and the gallery, or the queries
alone when they are the gallery), with ``d(i, j) = |p_i - p_j|^2`` (squared Euclidean distance
of the features as given; L2-normalise them first for cosine retrieval):

* ``N(i, k)``: the k nearest points of i, i itself included as the first (k + 1 points);
* ``R(i, k) = {j in N(i, k) : i in N(j, k)}`` (k-reciprocal neighbours);
* ``R*(i) = R(i, k1) ∪ R(j, h)`` over the ``j in R(i, k1)`` with
  ``|R(j, h) ∩ R(i, k1)| >= 2/3 |R(j, h)|``, where ``h = round(k1 / 2)`` (half to even);
* ``V_i[j] = exp(-d(i, j)) / sum_{l in R*(i)} exp(-d(i, l))`` for ``j in R*(i)``, else 0;
* local query expansion: ``V_i <- mean of V_j over the k2 nearest points j of i`` (i included);
* Jaccard distance ``d_J(i, j) = 1 - sum_l min(V_i[l], V_j[l]) / sum_l max(V_i[l], V_j[l])``;
* final distance ``d*(i, j) = (1 - lambda) d_J(i, j) + lambda d(i, j)``.

Each query's ``top_k`` nearest gallery items (by ``d``) are re-ordered by ``d*``; the rest of the
gallery keeps its original order after them, so a ranking metric can combine the two (with
``top_k`` the gallery size this is the full re-ranking).

Differences from the authors' released code, which follows the paper less literally: its
column-wise rescaling of ``d`` by the column's maximum (which needs every distance) is not
applied, and the expansion condition is the paper's ``>= 2/3`` (the code tests ``> 2/3``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from recog.postprocess.knn import _as_float32, knn

if TYPE_CHECKING:
    from scipy import sparse  # imported where re-ranking runs: ~0.35 s that every `import recog.app` paid

log = logging.getLogger(__name__)


def k_reciprocal_rerank(
    queries,
    gallery=None,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    top_k: int | None = 100,
    block_size: int = 2048,
):
    """Re-rank each query's ``top_k`` nearest gallery items by the k-reciprocal distance ``d*``.

    Args:
        queries: ``[Nq, D]`` float features.
        gallery: ``[Ng, D]``; None: the queries are the gallery (each query's own entry is left
            out of its ranking, as in ``recog.metrics.retrieval_metrics``).
        k1, k2, lambda_value: the paper's parameters (module docstring); its defaults.
        top_k: candidates re-ranked per query (the nearest by ``d``); None: the whole gallery.
        block_size: queries per block of work (memory, not results).

    Returns:
        ``(indices [Nq, K] int64, distances [Nq, K] float32)``: gallery indices in the new order
        and their ``d*``, ascending (ties keep the original order); ``K = min(top_k, gallery size)``.
    """
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    q, g, points, k1, k2 = _points(queries, gallery, k1, k2, lambda_value)
    n_gallery = len(q) - 1 if g is None else len(g)
    k = n_gallery if top_k is None else min(top_k, n_gallery)
    started = time.perf_counter()
    if g is None:  # one search serves the neighbour graph and the candidates
        neighbours, dist = _neighbour_lists(points, max(k1 + 1, k2, k + 1))  # [n, K] self first
        cand, cand_dist = neighbours[:, 1 : k + 1], dist[:, 1 : k + 1]
        cand_points = cand
    else:
        neighbours, _ = _neighbour_lists(points, max(k1 + 1, k2))
        cand, cand_dist = knn(q, g, k, metric="l2")
        cand_points = cand + len(q)
    order, final = _order(points, len(q), neighbours, cand_points, cand_dist, k1, k2, lambda_value, block_size, started)
    return np.take_along_axis(cand, order, axis=1), final


def rerank_candidates(
    queries,
    gallery,
    candidates: np.ndarray,
    candidate_scores: np.ndarray | None = None,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    block_size: int = 2048,
) -> tuple[np.ndarray, np.ndarray]:
    """The k-reciprocal order of given candidates (e.g. each query's top K of a first ranking).

    ``queries`` / ``gallery`` as for ``k_reciprocal_rerank``; ``candidates``: ``[Nq, K]`` distinct
    gallery indices per query (never the query itself when ``gallery`` is None);
    ``candidate_scores``: their inner products with the query (then ``d`` follows from them and
    the norms without another product), or None. Returns ``(order [Nq, K] int64, distances [Nq,
    K] float32)``: ``candidates[q, order[q]]`` is query q's new order, ``distances`` its ``d*``,
    ascending (ties keep the candidates' order).
    """
    q, g, points, k1, k2 = _points(queries, gallery, k1, k2, lambda_value)
    cand = np.asarray(candidates, dtype=np.int64)
    n_gallery = len(points) - (0 if g is None else len(q))
    if cand.ndim != 2 or len(cand) != len(q) or (cand.size and not (0 <= cand.min() and cand.max() < n_gallery)):
        raise ValueError(f"candidates must be [{len(q)}, K] gallery indices below {n_gallery}, got shape {cand.shape}")
    started = time.perf_counter()
    neighbours, _ = _neighbour_lists(points, max(k1 + 1, k2))
    cand_points = cand if g is None else cand + len(q)
    norms = np.einsum("ij,ij->i", points, points)
    if candidate_scores is None:
        candidate_scores = np.stack([points[cand_points[i]] @ q[i] for i in range(len(q))]) if cand.size else cand
    cand_dist = norms[: len(q), None] + norms[cand_points] - 2.0 * np.asarray(candidate_scores, np.float32)
    return _order(points, len(q), neighbours, cand_points, cand_dist, k1, k2, lambda_value, block_size, started)


def _points(queries, gallery, k1: int, k2: int, lambda_value: float):
    """Checked ``(queries, gallery or None, points, k1, k2)``: the point set P is the queries and the
    gallery (or the queries alone when they are the gallery); k1 and k2 capped at its size."""
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k-reciprocal re-ranking needs k1 >= 1 and k2 >= 1, got k1={k1}, k2={k2}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")
    q = _as_float32(queries, "queries")
    if gallery is None:
        g, points, n_gallery = None, q, len(q) - 1
    else:
        g = _as_float32(gallery, "gallery")
        if g.shape[1] != q.shape[1]:
            raise ValueError(f"query and gallery feature sizes differ: {q.shape[1]} vs {g.shape[1]}")
        points, n_gallery = np.concatenate([q, g]), len(g)
    if n_gallery < 1 or len(points) < 2:
        raise ValueError("k-reciprocal re-ranking needs at least two points and a non-empty gallery")
    return q, g, points, min(k1, len(points) - 1), min(k2, len(points))


def _order(points, n_queries, neighbours, cand_points, cand_dist, k1, k2, lambda_value, block_size, started):
    """``(order, d* ascending)`` of each query's candidate points (``cand_points`` [Nq, K], their
    squared distances ``cand_dist``), from the neighbour lists of all points."""
    cand_dist = np.maximum(cand_dist, 0.0)
    log.info(
        "re-ranking %d queries: neighbour search over %d points in %.1f s",
        n_queries,
        len(points),
        time.perf_counter() - started,
    )
    weights = _reciprocal_weights(points, neighbours, k1, block_size)
    if k2 > 1:
        from scipy import sparse

        n = len(points)
        expand = sparse.csr_matrix(
            (np.full(n * k2, 1.0 / k2), (np.repeat(np.arange(n), k2), neighbours[:, :k2].ravel())), shape=(n, n)
        )
        weights = (expand @ weights).tocsr()
    log.info(
        "re-ranking: k-reciprocal sets (%.1f entries per point after expansion) at %.1f s",
        weights.nnz / len(points),
        time.perf_counter() - started,
    )
    jaccard = _jaccard_distances(weights, cand_points, n_queries, block_size)
    log.info(
        "re-ranking: Jaccard distances of %d candidates per query at %.1f s",
        cand_points.shape[1],
        time.perf_counter() - started,
    )
    final = ((1.0 - lambda_value) * jaccard + lambda_value * cand_dist).astype(np.float32)
    order = np.argsort(final, axis=1, kind="stable")
    return order, np.take_along_axis(final, order, axis=1)


def _neighbour_lists(points: np.ndarray, k: int):
    """``([n, k] int64, [n, k] float32)``: each point itself (distance 0), then its k - 1 nearest
    other points and their squared distances, ascending."""
    own = np.arange(len(points))[:, None]
    if k == 1:
        return own, np.zeros((len(points), 1), np.float32)
    others, dist = knn(points, points, k - 1, metric="l2", exclude_self=True)
    return (
        np.concatenate([own, others], axis=1),
        np.concatenate([np.zeros((len(points), 1), np.float32), dist], axis=1),
    )


def _reciprocal_rows(neighbours: np.ndarray, k: int, rows: np.ndarray) -> np.ndarray:
    """``R(i, k)`` of the points ``rows``: ``[len(rows), k + 1]``, -1 where not reciprocal."""
    near = neighbours[:, : k + 1]
    cand = near[rows]  # [B, k+1]
    mutual = (near[cand] == rows[:, None, None]).any(axis=2)  # i in N(j, k)
    return np.where(mutual, cand, -1)


def _reciprocal_weights(points: np.ndarray, neighbours: np.ndarray, k1: int, block_size: int) -> sparse.csr_matrix:
    """The rows ``V_i`` before query expansion, as an ``[n, n]`` sparse matrix."""
    from scipy import sparse

    n = len(points)
    half = int(np.around(k1 / 2.0))
    sq_norms = np.einsum("ij,ij->i", points, points).astype(np.float64)
    recip_half = np.concatenate(
        [_reciprocal_rows(neighbours, half, np.arange(s, min(s + block_size, n))) for s in range(0, n, block_size)]
    )
    half_size = (recip_half >= 0).sum(axis=1)
    all_rows, all_cols, all_vals = [], [], []
    for start in range(0, n, block_size):
        rows = np.arange(start, min(start + block_size, n))
        recip = _reciprocal_rows(neighbours, k1, rows)  # [B, k1+1]
        valid = recip >= 0
        expansion = recip_half[np.where(valid, recip, 0)]  # [B, k1+1, h+1]: R(j, h) of each j
        inside = (expansion[..., None] == recip[:, None, None, :]).any(axis=3) & (expansion >= 0)
        accepted = valid & (3 * inside.sum(axis=2) >= 2 * half_size[np.where(valid, recip, 0)])
        extra = np.where(accepted[..., None] & (expansion >= 0), expansion, -1).reshape(len(rows), -1)
        members = np.sort(np.concatenate([recip, extra], axis=1), axis=1)
        members[:, 1:][members[:, 1:] == members[:, :-1]] = -1  # duplicates
        local, c = np.nonzero(members >= 0)
        r, cols = rows[local], members[local, c]
        dots = np.einsum("ij,ij->i", points[r], points[cols], dtype=np.float64)
        dist = np.maximum(sq_norms[r] + sq_norms[cols] - 2.0 * dots, 0.0)
        all_rows.append(r), all_cols.append(cols), all_vals.append(np.exp(-dist))
    rows, cols, vals = (np.concatenate(a) for a in (all_rows, all_cols, all_vals))
    weights = sparse.csr_matrix((vals, (rows, cols)), shape=(n, n))
    totals = np.asarray(weights.sum(axis=1)).ravel()
    return sparse.diags(1.0 / totals) @ weights


def _jaccard_distances(
    weights: sparse.csr_matrix, cand_points: np.ndarray, n_queries: int, block_size: int
) -> np.ndarray:
    """``d_J(i, j)`` for each query i (points 0 .. n_queries-1) and candidate point j ``[Nq, K]``.

    ``sum_l min(V_i[l], V_j[l])`` is accumulated through an inverted index (the columns of V), over
    the entries i and j share; ``sum_l max = |V_i|_1 + |V_j|_1 - sum_l min``. Pairs are matched to
    the candidate lists through a ``[rows, n]`` slot table per block of query rows. Blocks hold
    at most ``_PAIRS_PER_BLOCK`` shared entries and run in threads (NumPy releases the GIL).
    """
    n = weights.shape[0]
    by_column = weights.tocsc()
    col_ptr, col_rows, col_vals = by_column.indptr, by_column.indices, by_column.data.astype(np.float32)
    col_counts = np.diff(col_ptr)
    # Entries each query row expands to: the sum of the column counts of its stored entries.
    per_entry = np.concatenate([[0], np.cumsum(col_counts[weights.indices], dtype=np.int64)])
    cum_pairs = per_entry[weights.indptr[: n_queries + 1]]
    rows_cap = max(1, min(block_size, (1 << 23) // max(n, 1)))  # slot table <= 32 MiB per thread
    blocks, start = [], 0
    while start < n_queries:
        stop = int(np.searchsorted(cum_pairs, cum_pairs[start] + _PAIRS_PER_BLOCK, side="right")) - 1
        stop = min(max(stop, start + 1), start + rows_cap, n_queries)
        blocks.append((start, stop))
        start = stop
    row_sums = np.asarray(weights.sum(axis=1)).ravel()
    k = cand_points.shape[1]
    out = np.empty(cand_points.shape, np.float64)
    local_tables = threading.local()

    def run(bounds):
        start, stop = bounds
        table = getattr(local_tables, "table", None)
        if table is None:
            table = local_tables.table = np.full(rows_cap * n, -1, dtype=np.int32)
        block = weights[start:stop].tocoo()
        local = (np.arange(stop - start, dtype=np.int64)[:, None] * n + cand_points[start:stop]).ravel()
        table[local] = np.tile(np.arange(k, dtype=np.int32), stop - start)
        starts = col_ptr[block.col]
        counts = col_counts[block.col]
        # For each stored V_i[l]: every stored V_j[l] of the same column l.
        position = np.arange(int(counts.sum()), dtype=np.int64) + np.repeat(
            starts - (np.cumsum(counts) - counts), counts
        )
        row = np.repeat(block.row.astype(np.int64), counts)
        slot = table[row * n + col_rows[position]]
        hit = np.nonzero(slot >= 0)[0]
        shared = np.minimum(np.repeat(block.data.astype(np.float32), counts)[hit], col_vals[position[hit]])
        overlap = np.bincount(row[hit] * k + slot[hit], weights=shared, minlength=(stop - start) * k).reshape(-1, k)
        table[local] = -1
        union = row_sums[start:stop, None] + row_sums[cand_points[start:stop]] - overlap
        out[start:stop] = 1.0 - overlap / union

    with ThreadPoolExecutor(_threads()) as pool:
        list(pool.map(run, blocks))
    return out


_PAIRS_PER_BLOCK = 1 << 21


def _threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
