"""Retrieval results as one object: what a ranking of the gallery gave every query.

``recog.metrics.rank`` ranks the gallery once for every query (``recog.metrics._ranking``: blocked,
threaded, exact) and returns a ``RetrievalResults``; everything downstream reads that object: the metrics
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

from recog.metrics.pairs import PairScores
from recog.metrics.ranks import query_stats, summarize


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
    pairs: PairScores | None = None  # the score distributions of all positive and negative pairs

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
            pairs=None,  # they describe all the queries
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
