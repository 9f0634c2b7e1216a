"""k-reciprocal re-ranking of ``RetrievalResults`` (``postprocess=k_reciprocal``).

Each query's first ``top_k`` places of the ranking (the candidates) are re-ordered by the
k-reciprocal distance ``d*`` (``recog.postprocess.rerank``); the places after them keep their
order. The positives' ranks follow exactly: a positive among the candidates takes its new place,
one after them keeps its rank (at least ``top_k``), so the metrics are those of the new ranking.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from recog.metrics.results import RetrievalResults
from recog.postprocess.base import PostProcessor
from recog.postprocess.rerank import rerank_candidates


class KReciprocal(PostProcessor):
    """k-reciprocal re-ranking (Zhong et al. 2017) of each query's top ``top_k`` places; ``k1``,
    ``k2`` and ``lambda_value`` are the paper's parameters (its values by default)."""

    reranks = True
    real_only = True

    def __init__(self, k1: int = 20, k2: int = 6, lambda_value: float = 0.3, top_k: int = 100):
        for name, value in (("k1", k1), ("k2", k2), ("top_k", top_k)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer of at least 1, got {value!r}")
        if not 0.0 <= lambda_value <= 1.0:  # also refuses nan
            raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value!r}")
        self.k1, self.k2, self.lambda_value, self.top_k = k1, k2, float(lambda_value), top_k

    @property
    def candidates(self) -> int:
        return self.top_k

    def rerank(self, results: RetrievalResults, queries, gallery) -> RetrievalResults:
        if results.binary:
            raise ValueError("k-reciprocal re-ranking needs real features, not binary codes")
        length = len(queries) - 1 if gallery is None else len(gallery)  # places in each ranking
        k = min(self.top_k, length)
        if results.k < k:
            raise ValueError(f"re-ranking needs the top {k} places of the ranking; the results hold {results.k}")
        if k < 2:
            return results
        candidates, candidate_scores = results.indices[:, :k], results.scores[:, :k]
        order, distances = rerank_candidates(
            queries, gallery, candidates, candidate_scores, k1=self.k1, k2=self.k2, lambda_value=self.lambda_value
        )
        indices, scores = results.indices.copy(), results.scores.copy()
        indices[:, :k] = np.take_along_axis(candidates, order, axis=1)
        scores[:, :k] = np.take_along_axis(candidate_scores, order, axis=1)
        reranked = np.full(indices.shape, np.nan, dtype=np.float32)
        reranked[:, :k] = distances
        ranks = results.positive_ranks
        if ranks is not None:
            rows = np.repeat(np.arange(len(results)), np.diff(results.positive_ptr))
            new_place = np.argsort(order, axis=1)  # the inverse permutation: old place -> new place
            inside = ranks < k
            ranks = ranks.copy()
            ranks[inside] = new_place[rows[inside], ranks[inside]]
            ranks = np.sort(rows * length + ranks) - rows * length  # ascending within each query again
        return replace(results, indices=indices, scores=scores, distances=reranked, positive_ranks=ranks)
