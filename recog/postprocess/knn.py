"""Exact k-nearest-neighbour searches with faiss (blocked by faiss itself; no N x N matrix)."""

from __future__ import annotations

import numpy as np


def _as_float32(x, name: str) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty [N, D] array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return x


def knn(queries: np.ndarray, database: np.ndarray, k: int, metric: str = "l2", exclude_self: bool = False):
    """The ``k`` nearest database rows of each query: ``(indices [Nq, k] int64, scores [Nq, k] float32)``.

    ``metric="l2"``: squared Euclidean distances, ascending; ``"ip"``: inner products, descending.
    ``exclude_self`` (queries and database the same array): each query's own row is dropped
    from its list (it is searched for k + 1 and removed wherever faiss placed it, so duplicates
    of a point are kept as neighbours). ``k`` is capped at the rows available.
    """
    n_db = database.shape[0]
    k = min(k, n_db - 1 if exclude_self else n_db)
    if k < 1:
        raise ValueError("not enough database rows for a neighbour search")
    import faiss  # here, not at import: recog.config imports recog.postprocess, and faiss costs ~0.2 s

    index = faiss.IndexFlatL2(database.shape[1]) if metric == "l2" else faiss.IndexFlatIP(database.shape[1])
    index.add(database)
    scores, indices = index.search(queries, k + 1 if exclude_self else k)
    if exclude_self:
        own = indices == np.arange(len(queries))[:, None]
        # Rows where faiss did not return the query itself (ties with duplicates): drop the last.
        missing = ~own.any(axis=1)
        own[missing, -1] = True
        keep = ~own
        indices = indices[keep].reshape(len(queries), k)
        scores = scores[keep].reshape(len(queries), k)
    return indices.astype(np.int64), scores
