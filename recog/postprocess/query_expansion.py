"""Query expansion: average QE (Chum et al. 2007) and alpha QE (Radenovic et al. 2018)."""

from __future__ import annotations

import numpy as np

from recog.postprocess.base import PostProcessor
from recog.postprocess.knn import _as_float32, knn


def query_expansion(queries, gallery=None, k: int = 5, alpha: float = 0.0, block_size: int = 4096) -> np.ndarray:
    """Expanded queries ``[Nq, D] float32``, L2-normalised: each query plus its top ``k`` gallery
    neighbours by inner product, ``q' = normalise(q + sum_i w_i g_i)``.

    ``alpha = 0``: average QE, ``w_i = 1``; ``alpha > 0``: alpha QE, ``w_i = max(s_i, 0) ** alpha``
    with ``s_i = <q, g_i>`` (the query's own weight stays 1). Features should be L2-normalised
    (then ``s_i`` is a cosine). ``gallery=None``: the queries are the gallery (query == gallery
    protocol) and a query's own entry is not one of its neighbours. Rank the gallery with the
    expanded queries afterwards (the gallery itself is unchanged).
    """
    if k < 1:
        raise ValueError(f"query expansion needs k >= 1, got {k}")
    if alpha < 0:
        raise ValueError(f"query expansion alpha must be >= 0, got {alpha}")
    q = _as_float32(queries, "queries")
    g = q if gallery is None else _as_float32(gallery, "gallery")
    if g.shape[1] != q.shape[1]:
        raise ValueError(f"query and gallery feature sizes differ: {q.shape[1]} vs {g.shape[1]}")
    indices, sims = knn(q, g, k, metric="ip", exclude_self=gallery is None)
    weights = np.ones_like(sims) if alpha == 0 else np.maximum(sims, 0.0) ** np.float32(alpha)
    out = np.empty_like(q)
    for start in range(0, len(q), block_size):  # blocks: the gathered neighbours take k x the block's size
        stop = start + block_size
        expanded = q[start:stop] + np.einsum("nk,nkd->nd", weights[start:stop], g[indices[start:stop]])
        norms = np.linalg.norm(expanded, axis=1, keepdims=True)
        out[start:stop] = expanded / np.maximum(norms, np.float32(1e-12))
    return out


class QueryExpansion(PostProcessor):
    """Query expansion before the ranking (``postprocess=query_expansion``): each query becomes itself
    plus its top ``k`` gallery neighbours, normalised; ``alpha`` 0: average QE, > 0: alpha QE
    (``query_expansion``). With query == gallery the one set is expanded, and a query is not its
    own neighbour."""

    expands = True
    real_only = True

    def __init__(self, k: int = 5, alpha: float = 0.0):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k (neighbours a query is expanded with) must be an integer of at least 1, got {k!r}")
        if not alpha >= 0 or alpha == float("inf"):  # also refuses nan
            raise ValueError(f"alpha must be 0 (average QE) or a positive number (alpha QE), got {alpha!r}")
        self.k, self.alpha = k, float(alpha)

    def expand(self, queries, gallery):
        return query_expansion(queries, gallery, k=self.k, alpha=self.alpha), gallery
