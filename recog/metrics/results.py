"""Retrieval results as one object: what a ranking of the gallery gave every query.

``rank`` ranks the gallery once for every query (``recog.metrics._ranking``: blocked, threaded,
exact) and returns a ``RetrievalResults``; everything downstream reads that object: the metrics
(functions of the positives' ranks, ``recog.metrics.ranks``), the pictures of results, the rows
of ``results.json``, and the post-processing that re-orders it (``recog.postprocess``).

It holds, per query, the top k gallery items (indices and scores, best first) and the exact
0-based ranks of all its positives in the whole ranking, never the whole ranking: at SOP scale
(60k x 60k) that is a few MB. Conventions are those of ``recog.metrics.retrieval``: inner
product descending (real features) or Hamming distance ascending (binary codes), equal scores by
lower gallery index; with query == gallery each query's own entry is left out. Empty places
(k beyond the ranking's length) have index -1 and score ``-inf`` (real) or ``2**31 - 1`` (binary).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np

from recog.metrics._ranking import positive_ranks
from recog.metrics._topk import top_k_rows
from recog.metrics.binary import check_bits, signed_codes
from recog.metrics.ranks import query_stats, summarize

EMPTY_DISTANCE = 2**31 - 1  # the Hamming distance of an empty place


@dataclass(frozen=True)
class RetrievalResults:
    """The results of Q queries (module docstring). ``indices`` / ``scores``: ``[Q, k]``."""

    scores: np.ndarray  # float inner products (real) or int32 Hamming distances (binary)
    indices: np.ndarray  # int64 gallery indices, -1 for an empty place
    binary: bool = False
    gallery_paths: list | None = None
    gallery_labels: np.ndarray | None = None
    query_paths: list | None = None
    query_labels: np.ndarray | None = None
    # The positives' 0-based ranks in each query's whole ranking, ascending (CSR: query i has
    # positive_ranks[positive_ptr[i]:positive_ptr[i + 1]]); None when the ranking had no labels.
    positive_ptr: np.ndarray | None = None
    positive_ranks: np.ndarray | None = None
    exclude_self: bool = False  # query i was gallery item i, left out of its ranking
    distances: np.ndarray | None = None  # [Q, k] re-ranking distances (ascending), nan where not re-ranked

    def __post_init__(self):
        count = len(self.indices)
        object.__setattr__(self, "query_paths", check_paths(self.query_paths, count, "query"))
        if self.query_labels is not None:
            labels = np.asarray(self.query_labels)
            if labels.shape != (count,):
                raise ValueError(f"query labels must have shape ({count},), got {labels.shape}")
            object.__setattr__(self, "query_labels", labels)
        if (self.positive_ptr is None) != (self.positive_ranks is None):
            raise ValueError("give both positive_ptr and positive_ranks, or neither")
        if self.positive_ptr is not None and len(self.positive_ptr) != count + 1:
            raise ValueError(f"positive_ptr must have {count + 1} entries, got {len(self.positive_ptr)}")

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def k(self) -> int:
        """Places per query."""
        return self.indices.shape[1]

    @property
    def labelled(self) -> bool:
        """Whether the positives' ranks are known (queries and gallery had labels)."""
        return self.positive_ptr is not None

    # ------------------------------------------------------------------ metrics

    def metrics(self, recall_at=(1, 5, 10)) -> dict[str, float | int]:
        """Recall@K, Precision@K, mAP, mINP and the query counts (``recog.metrics.ranks.summarize``)."""
        self._need_labels("retrieval metrics")
        return summarize(self.positive_ptr, self.positive_ranks, recall_at, self.exclude_self)

    def average_precision(self) -> np.ndarray:
        """``[Q]`` float64 AP of each query; nan for a query without a positive."""
        self._need_labels("average precision")
        first, ap, _, _ = query_stats(self.positive_ptr, self.positive_ranks, [])
        return np.where(first >= 0, ap, np.nan)

    def worst(self, count: int) -> np.ndarray:
        """The (up to) ``count`` queries of lowest AP, lowest first (ties: lower query index);
        queries without a positive are not among them."""
        ap = self.average_precision()
        valid = np.flatnonzero(~np.isnan(ap))
        return valid[np.lexsort((valid, ap[valid]))][: max(0, count)]

    # ------------------------------------------------------------------ views

    def select(self, rows) -> RetrievalResults:
        """The results of the queries ``rows`` (indices into this object), in that order."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        ptr, ranks = self.positive_ptr, self.positive_ranks
        if ptr is not None:
            counts = np.diff(ptr)[rows]
            starts = np.repeat(ptr[rows], counts)
            ranks = ranks[starts + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)]
            ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return replace(
            self,
            scores=self.scores[rows],
            indices=self.indices[rows],
            query_paths=None if self.query_paths is None else [self.query_paths[i] for i in rows],
            query_labels=None if self.query_labels is None else self.query_labels[rows],
            positive_ptr=ptr,
            positive_ranks=ranks,
            distances=None if self.distances is None else self.distances[rows],
        )

    def top(self, k: int) -> RetrievalResults:
        """The first ``k`` places of every query (the positives' ranks are kept)."""
        return replace(
            self,
            scores=self.scores[:, :k],
            indices=self.indices[:, :k],
            distances=None if self.distances is None else self.distances[:, :k],
        )

    def to_dicts(self) -> list[dict]:
        """One dict per query: ``{"query": path or None, "label": label or None, "results": [{"rank",
        "index", "path", "label", "score"}, ...]}``, best first; ``rank`` is 1-based; ``path`` /
        ``label`` are None when unknown; ``score`` is a float (inner product) or an int (Hamming
        distance); a re-ranked place adds its ``rerank_distance``. Empty places are left out."""
        q_labels = None if self.query_labels is None else self.query_labels.tolist()
        distances = None if self.distances is None else self.distances.tolist()
        out = []
        for q in range(len(self.indices)):
            entries = []
            for place, (score, index) in enumerate(zip(self.scores[q].tolist(), self.indices[q].tolist())):
                if index < 0:
                    continue
                entry = {
                    "rank": place + 1,
                    "index": int(index),
                    "path": None if self.gallery_paths is None else self.gallery_paths[index],
                    "label": None if self.gallery_labels is None else self.gallery_labels[index].item(),
                    "score": int(score) if self.binary else float(score),
                }
                if distances is not None and not np.isnan(distances[q][place]):
                    entry["rerank_distance"] = float(distances[q][place])
                entries.append(entry)
            out.append(
                {
                    "query": None if self.query_paths is None else self.query_paths[q],
                    "label": None if q_labels is None else q_labels[q],
                    "results": entries,
                }
            )
        return out

    def _need_labels(self, what: str) -> None:
        if not self.labelled:
            raise ValueError(f"{what} need labels on the queries and the gallery; these results have none")


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
    on_chunk = (lambda scores, ptr, cols: top_k_rows(scores, k)) if k else None
    ptrs, ranks, tops = [np.zeros(1, np.int64)], [], []
    for _, ptr, block_ranks, *extra in positive_ranks(
        queries, q_labels if labelled else None, gallery, g_labels if labelled else None, block_size, on_chunk
    ):
        ptrs.append(ptr[1:] + ptrs[-1][-1])
        ranks.append(block_ranks)
        if extra:
            tops.extend(extra[0])
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
    )


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


def check_labels(labels, count: int, name: str = "gallery") -> np.ndarray | None:
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.shape != (count,):
        raise ValueError(f"{name} labels must have shape ({count},), got {labels.shape}")
    if count and labels.dtype.kind not in "iubU":
        raise ValueError(f"{name} labels must be integers or strings, got dtype {labels.dtype}")
    return labels


def check_paths(paths, count: int, name: str = "gallery") -> list[str] | None:
    if paths is None:
        return None
    if isinstance(paths, (str, bytes, os.PathLike)):
        raise ValueError(f"{name} paths must be a sequence of paths, got a single path {paths!r}")
    paths = [os.fspath(p) for p in paths]
    if any(not isinstance(p, str) for p in paths):
        raise ValueError(f"{name} paths must be str or path-like, not bytes")
    if len(paths) != count:
        raise ValueError(f"{name} paths: {len(paths)} for {count} items")
    return paths
