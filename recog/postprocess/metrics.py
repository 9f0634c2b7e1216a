"""Retrieval metrics after query expansion and / or k-reciprocal re-ranking.

The same metrics as ``recog.metrics.retrieval_metrics`` (Recall@K, Precision@K, mAP, mINP), of
the ranking the post-processing produces:

* query expansion (``qe_k`` > 0): the queries are replaced by their expansions
  (``recog.postprocess.query_expansion``). When the queries are the gallery, the expansion is
  applied to that one set (queries and gallery alike), so that each query's own entry can still be
  left out of its ranking;
* re-ranking (``rerank_top_k`` > 0 candidates): each query's ranking is its top ``rerank_top_k``
  gallery items re-ordered by the k-reciprocal distance, then the rest of the gallery in the
  original order. A positive outside the candidates keeps its original rank (at least
  ``rerank_top_k``, one past the other such positives when the candidate list and the metric's
  own order disagree at the boundary, which only float-level ties can cause).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from recog.metrics.retrieval import positive_ranks, retrieval_metrics, summarize_query_stats
from recog.postprocess.query_expansion import query_expansion
from recog.postprocess.rerank import k_reciprocal_rerank


def postprocessed_metrics(
    query_features,
    query_labels,
    gallery_features=None,
    gallery_labels=None,
    recall_at: Iterable[int] = (1, 5, 10),
    qe_k: int = 0,
    qe_alpha: float = 0.0,
    rerank_top_k: int = 0,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    block_size: int = 1024,
) -> dict:
    """``retrieval_metrics`` of the post-processed ranking (module docstring); arguments as there,
    plus query expansion (``qe_k`` neighbours, ``qe_alpha``; 0: none) and re-ranking
    (``rerank_top_k`` candidates, 0: none; ``k1``, ``k2``, ``lambda_value``)."""
    queries = np.asarray(query_features, np.float32)
    q_labels = np.asarray(query_labels)
    self_match = gallery_features is None
    gallery = None if self_match else np.asarray(gallery_features, np.float32)
    g_labels = None if self_match else np.asarray(gallery_labels)
    if qe_k:
        queries = query_expansion(queries, gallery, k=qe_k, alpha=qe_alpha)
    if not rerank_top_k:
        return retrieval_metrics(queries, q_labels, gallery, g_labels, recall_at=recall_at, block_size=block_size)

    ks = sorted({int(k) for k in recall_at})
    if not ks or ks[0] < 1:
        raise ValueError(f"recall_at needs positive integers, got {list(recall_at)}")
    reranked, _ = k_reciprocal_rerank(queries, gallery, k1=k1, k2=k2, lambda_value=lambda_value, top_k=rerank_top_k)
    top = reranked.shape[1]
    ref_labels = q_labels if self_match else g_labels
    n = len(queries)
    first = np.full(n, -1, np.int64)
    ap, inp = np.zeros(n), np.zeros(n)
    hits = np.zeros((n, len(ks)), np.int64)
    for start, ptr, ranks in positive_ranks(queries, q_labels, gallery, g_labels, block_size):
        for i in range(len(ptr) - 1):
            q = start + i
            original = ranks[ptr[i] : ptr[i + 1]]
            if len(original) == 0:
                continue
            in_list = np.nonzero(ref_labels[reranked[q]] == q_labels[q])[0]  # new ranks of listed positives
            # The positives not listed are the last ones in the original order; they follow the list.
            count = len(original) - len(in_list)
            outside = np.maximum(original[len(original) - count :], top + np.arange(count))
            final = np.sort(np.concatenate([in_list, outside]))
            first[q] = final[0]
            ap[q] = np.mean(np.arange(1, len(final) + 1) / (final + 1))
            inp[q] = len(final) / (final[-1] + 1)
            hits[q] = (final[:, None] < np.asarray(ks)).sum(axis=0)
    valid = first >= 0
    if not valid.any():
        raise ValueError("none of the queries has a positive: retrieval metrics are undefined")
    return summarize_query_stats(first, ap, inp, hits, ks)
