"""Gallery search over faiss: build, extend, search, save and load an index of gallery vectors.

Two kinds of gallery vectors, with the same conventions as ``recog.metrics``:

* real features ``[M, D] float``, ranked by inner product, **descending** (normalise the
  features first for cosine similarity); stored as float32;
* binary codes, bit-packed ``[M, D / 8] uint8`` (``recog.metrics.pack_bits``), ranked by
  Hamming distance, **ascending**; ``dim`` is the number of bits ``8 * B``.

Index kinds (``flat`` exact; ``ivf`` / ``hnsw`` approximate, for large galleries), their
parameters and the fixed order among equal scores: ``recog.search.faiss_backend``. Every kind
stores the vectors uncompressed, so ``gallery_vectors()`` returns them exactly. A query's results
are ordered by score (inner product descending, Hamming ascending) and equal scores by gallery
index, lower first: the ranking of ``recog.metrics``. Empty result places (k larger than the
gallery, or an approximate index that found fewer than k candidates) have index -1 and score
``-inf`` (real) or ``2**31 - 1`` (binary), and come last. ``retrieve`` wraps a search in a
``RetrievalResults`` (``recog.search.results``); saving and loading with the manifest checks:
``recog.search.store``.

Metrics
-------
``GalleryIndex.metrics`` computes ``recog.metrics.retrieval_metrics`` (real) or
``hamming_metrics`` (binary) exactly, in NumPy, on the gallery vectors stored in the index
(every kind here stores them uncompressed, ``gallery_vectors()``): the metrics are those of an
exact search, whatever the index kind, not of the approximate ``ivf`` / ``hnsw`` search.

"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from recog.metrics import hamming_metrics, retrieval_metrics, unpack_bits
from recog.search import store
from recog.search.faiss_backend import (
    KINDS,
    PARAM_NAMES,
    IndexConfigError,
    apply_search_params,
    check_params,
    check_vectors,
    make_faiss_index,
    positive_int,
    search_sorted,
)
from recog.search.results import RetrievalResults, check_labels, check_paths
from recog.search.store import FORMAT_VERSION

__all__ = ["GalleryIndex", "IndexConfigError", "KINDS", "FORMAT_VERSION", "RetrievalResults"]


class GalleryIndex:
    """A faiss index of gallery vectors with their labels and image paths (see module docstring).

    Make one with ``GalleryIndex.build`` or ``GalleryIndex.load``; the constructor is internal.
    """

    def __init__(
        self,
        index,
        *,
        kind: str,
        binary: bool,
        dim: int,
        params: dict,
        labels: np.ndarray | None,
        paths: list[str] | None,
    ):
        self._index = index
        self._kind = kind
        self._binary = bool(binary)
        self._dim = int(dim)
        self._params = dict(params)
        self._labels = labels
        self._paths = paths

    # ------------------------------------------------------------------ construction

    @classmethod
    def build(
        cls, features_or_codes, labels=None, paths=None, kind: str = "flat", binary: bool = False, **params
    ) -> GalleryIndex:
        """Index a gallery.

        Args:
            features_or_codes: ``[M, D]`` float features (``binary=False``) or bit-packed codes
                ``[M, D / 8] uint8`` (``binary=True``, from ``recog.metrics.pack_bits``); M >= 1.
            labels: ``[M]`` integer or string labels, or None.
            paths: M image paths (any path-like, stored as str), or None.
            kind: ``flat``, ``ivf`` or ``hnsw``.
            **params: the kind's parameters (module docstring).

        Raises:
            IndexConfigError: unknown kind or parameter, invalid parameter value.
            ValueError: malformed vectors, labels or paths.
        """
        if kind not in KINDS:
            raise IndexConfigError(f"unknown gallery index kind {kind!r}; choose one of {', '.join(KINDS)}")
        vectors = check_vectors(features_or_codes, binary, None, "gallery")
        if len(vectors) == 0:
            raise ValueError("the gallery is empty: nothing to index")
        count = len(vectors)
        labels = check_labels(labels, count)
        paths = check_paths(paths, count)
        dim = vectors.shape[1] * 8 if binary else vectors.shape[1]
        params = check_params(kind, params, count)
        index = make_faiss_index(kind, bool(binary), dim, params)
        if kind == "ivf":
            index.train(vectors)
        index.add(vectors)
        out = cls(index, kind=kind, binary=bool(binary), dim=dim, params=params, labels=labels, paths=paths)
        out._apply_search_params()
        return out

    def add(self, more, labels=None, paths=None) -> GalleryIndex:
        """Append gallery items (indices ``ntotal ..``); returns self.

        Labels and paths must be given exactly when the index has them. For ``flat`` the result
        is identical to building from the whole gallery at once; ``ivf`` keeps the lists
        trained on the first gallery (retrain by rebuilding if the data drift); ``hnsw`` inserts
        into its graph.
        """
        vectors = check_vectors(more, self._binary, self._dim, "added")
        count = len(vectors)
        if (labels is None) != (self._labels is None):
            raise ValueError(
                "the index has labels, give labels for the added items"
                if labels is None
                else "the index has no labels: cannot add labelled items"
            )
        if (paths is None) != (self._paths is None):
            raise ValueError(
                "the index has paths, give paths for the added items"
                if paths is None
                else "the index has no paths: cannot add items with paths"
            )
        labels = check_labels(labels, count)
        paths = check_paths(paths, count)
        if count == 0:
            return self
        if labels is not None:
            kinds = ["string" if a.dtype.kind == "U" else "integer" for a in (self._labels, labels)]
            if kinds[0] != kinds[1]:
                raise ValueError(f"the index has {kinds[0]} labels, the added items {kinds[1]} ones")
            merged = np.concatenate([self._labels, labels])
        self._index.add(vectors)
        if labels is not None:
            self._labels = merged
        if paths is not None:
            self._paths = self._paths + paths
        return self

    # ------------------------------------------------------------------ properties

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def binary(self) -> bool:
        return self._binary

    @property
    def dim(self) -> int:
        """Feature size D, or the number of bits of a code (8 x bytes)."""
        return self._dim

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    def __len__(self) -> int:
        return self.ntotal

    @property
    def labels(self) -> np.ndarray | None:
        """``[ntotal]`` gallery labels (do not modify), or None."""
        return self._labels

    @property
    def paths(self) -> list[str] | None:
        """Gallery image paths (a copy), or None."""
        return None if self._paths is None else list(self._paths)

    @property
    def params(self) -> dict:
        """The kind's parameters (a copy), defaults filled in."""
        return dict(self._params)

    @property
    def faiss_index(self):
        """The underlying faiss index (searching it directly skips the tie handling)."""
        return self._index

    def __repr__(self) -> str:
        what = "bits" if self._binary else "dims"
        return (
            f"GalleryIndex(kind={self._kind!r}, binary={self._binary}, {self._dim} {what}, "
            f"{self.ntotal} items, labels={self._labels is not None}, paths={self._paths is not None}, "
            f"params={self._params})"
        )

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Change ``nprobe`` (ivf) or ``ef_search`` (hnsw) for later searches (and saves)."""
        given = {name: value for name, value in (("nprobe", nprobe), ("ef_search", ef_search)) if value is not None}
        allowed = set(PARAM_NAMES[self._kind])
        for name, value in given.items():
            if name not in allowed:
                raise IndexConfigError(f"{name} is not a parameter of a {self._kind!r} index")
            self._params[name] = positive_int(value, name)
        self._apply_search_params()

    def gallery_vectors(self) -> np.ndarray:
        """A copy of the stored gallery: ``[M, D] float32`` features or ``[M, D / 8] uint8`` codes."""
        return self._index.reconstruct_n(0, self.ntotal)

    # ------------------------------------------------------------------ search

    def search(self, queries, k: int, *, exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Top-k gallery items of each query.

        Args:
            queries: ``[Q, D]`` float features or ``[Q, D / 8] uint8`` codes, as the gallery.
            k: results per query (>= 1); places past the gallery's end are empty.
            exclude_self: the queries are the gallery itself, in order (query == gallery
                protocol): query i's own entry (index i) is removed from its ranking.

        Returns:
            ``scores [Q, k]`` (float32 inner products, or int32 Hamming distances) and
            ``indices [Q, k]`` (int64 gallery indices), best first, ties by lower index; empty
            places have index -1 (module docstring).
        """
        k = positive_int(k, "k")
        queries = check_vectors(queries, self._binary, self._dim, "query")
        if exclude_self and len(queries) != self.ntotal:
            raise ValueError(
                f"exclude_self needs the gallery as queries: {len(queries)} queries for {self.ntotal} gallery items"
            )
        if not exclude_self:
            return search_sorted(self._index, self._kind, self._binary, queries, k)
        scores, indices = search_sorted(self._index, self._kind, self._binary, queries, k + 1)
        own = indices == np.arange(len(queries))[:, None]
        keep = ~own
        keep[~own.any(axis=1), -1] = False  # self not in the top k + 1: drop the (k+1)-th
        return scores[keep].reshape(len(queries), k), indices[keep].reshape(len(queries), k)

    def retrieve(
        self, queries, k: int, query_paths=None, query_labels=None, *, exclude_self: bool = False
    ) -> RetrievalResults:
        """``search`` as a ``RetrievalResults`` with the gallery's and the queries' paths and labels."""
        scores, indices = self.search(queries, k, exclude_self=exclude_self)
        return RetrievalResults(scores, indices, self._binary, self._paths, self._labels, query_paths, query_labels)

    def results(
        self, queries, k: int, query_paths=None, query_labels=None, *, exclude_self: bool = False
    ) -> list[dict]:
        """JSON-ready search results: ``retrieve(...).to_dicts()``.

        Returns one dict per query: ``{"query": path or None, "label": label or None,
        "results": [{"rank", "index", "path", "label", "score"}, ...]}``, best first; ``rank``
        is 1-based; ``path`` / ``label`` are None when the index has none; ``score`` is a float
        (inner product) or an int (Hamming distance). Empty places are left out.
        """
        return self.retrieve(queries, k, query_paths, query_labels, exclude_self=exclude_self).to_dicts()

    def metrics(
        self, queries=None, query_labels=None, recall_at: Iterable[int] = (1, 5, 10), block_size: int = 1024
    ) -> dict[str, float | int]:
        """Retrieval metrics of the queries against the gallery, computed exactly in NumPy.

        Exactly ``retrieval_metrics(queries, query_labels, gallery, gallery_labels, recall_at)``
        for real features, ``hamming_metrics`` on the unpacked bits for codes, with the stored
        gallery (``gallery_vectors()``): whatever the kind, not the approximate search. With
        ``queries`` and ``query_labels`` both None the gallery is the query set and each query's
        own entry is removed (the SOP protocol).
        """
        if self._labels is None:
            raise ValueError("the gallery has no labels: retrieval metrics need them")
        gallery = self.gallery_vectors()
        if queries is None and query_labels is None:
            if self._binary:
                return hamming_metrics(
                    unpack_bits(gallery, self._dim), self._labels, recall_at=recall_at, block_size=block_size
                )
            return retrieval_metrics(gallery, self._labels, recall_at=recall_at, block_size=block_size)
        if queries is None or query_labels is None:
            raise ValueError("give both queries and query_labels, or neither (query set == gallery)")
        if self._binary:
            codes = check_vectors(queries, True, self._dim, "query")
            return hamming_metrics(
                unpack_bits(codes, self._dim),
                query_labels,
                unpack_bits(gallery, self._dim),
                self._labels,
                recall_at=recall_at,
                block_size=block_size,
            )
        check_vectors(queries, False, self._dim, "query")  # shape and finiteness; passed as given
        return retrieval_metrics(
            queries, query_labels, gallery, self._labels, recall_at=recall_at, block_size=block_size
        )

    # ------------------------------------------------------------------ persistence

    def manifest(self) -> dict:
        """The ``manifest.json`` content."""
        return store.manifest(
            kind=self._kind,
            binary=self._binary,
            dim=self._dim,
            count=self.ntotal,
            params=self._params,
            labels=self._labels,
            paths=self._paths,
        )

    def save(self, directory) -> Path:
        """Write ``index.faiss`` and ``manifest.json`` into ``directory`` (created if needed).

        A directory that holds nothing else is replaced whole (``recog.utils.atomic.replacing_dir``),
        so a failed or killed save leaves the previous index; disk full or permission denied raise
        ``recog.utils.atomic.StorageError`` (``recog.search.store``).
        """
        return store.save(directory, self._index, self._binary, self.manifest())

    @classmethod
    def load(cls, directory) -> GalleryIndex:
        """Read an index written by ``save``.

        Raises:
            recog.errors.DataError (a RecogError): the directory, manifest or index file is
                missing, unreadable or inconsistent (counts, sizes, kind) (``recog.search.store``).
        """
        parts = store.load(directory)
        out = cls(parts.pop("index"), **parts)
        out._apply_search_params()
        return out

    # ------------------------------------------------------------------ internals

    def _apply_search_params(self) -> None:
        apply_search_params(self._index, self._kind, self._params)
