"""Search results as an object: per query its top-k gallery items, with paths, labels and scores.

``RetrievalResults`` holds the arrays ``GalleryIndex.search`` returns (``scores [Q, k]``,
``indices [Q, k]``, best first, empty places index -1) with the gallery's and the queries' paths
and labels, and turns them into the JSON-ready rows of ``results.json`` (``to_dicts``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RetrievalResults:
    """Top-k results of Q queries (``indices`` / ``scores``: ``[Q, k]``, empty places index -1)."""

    scores: np.ndarray  # float32 inner products (real) or int32 Hamming distances (binary)
    indices: np.ndarray  # int64 gallery indices
    binary: bool
    gallery_paths: list | None = None
    gallery_labels: np.ndarray | None = None
    query_paths: list | None = None
    query_labels: np.ndarray | None = None

    def __post_init__(self):
        count = len(self.indices)
        object.__setattr__(self, "query_paths", check_paths(self.query_paths, count, "query"))
        object.__setattr__(self, "query_labels", check_labels(self.query_labels, count, "query"))

    def __len__(self) -> int:
        return len(self.indices)

    def to_dicts(self) -> list[dict]:
        """One dict per query: ``{"query": path or None, "label": label or None, "results": [{"rank",
        "index", "path", "label", "score"}, ...]}``, best first; ``rank`` is 1-based; ``path`` /
        ``label`` are None when unknown; ``score`` is a float (inner product) or an int (Hamming
        distance). Empty places are left out."""
        q_labels = None if self.query_labels is None else self.query_labels.tolist()
        out = []
        for q in range(len(self.indices)):
            entries = []
            for place, (score, index) in enumerate(zip(self.scores[q].tolist(), self.indices[q].tolist())):
                if index < 0:
                    continue
                entries.append(
                    {
                        "rank": place + 1,
                        "index": int(index),
                        "path": None if self.gallery_paths is None else self.gallery_paths[index],
                        "label": None if self.gallery_labels is None else self.gallery_labels[index].item(),
                        "score": int(score) if self.binary else float(score),
                    }
                )
            out.append(
                {
                    "query": None if self.query_paths is None else self.query_paths[q],
                    "label": None if q_labels is None else q_labels[q],
                    "results": entries,
                }
            )
        return out


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
