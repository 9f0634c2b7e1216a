"""Gallery search over faiss: build, extend, search, save and load an index of gallery vectors.

Two kinds of gallery vectors, with the same conventions as ``recog.metrics``:

* real features ``[M, D] float``, ranked by inner product, **descending** (normalise the
  features first for cosine similarity); stored as float32;
* binary codes, bit-packed ``[M, D / 8] uint8`` (``recog.metrics.pack_bits``), ranked by
  Hamming distance, **ascending**; ``dim`` is the number of bits ``8 * B``.

Index kinds:

* ``flat``: exact search; ``IndexFlatIP`` (real), ``IndexBinaryFlat`` (binary);
* ``ivf``: approximate, for large galleries; ``IndexIVFFlat`` with inner product (real),
  ``IndexBinaryIVF`` (binary); trained (k-means) on the gallery given to ``build``;
* ``hnsw``: approximate graph search; ``IndexHNSWFlat`` with inner product (real),
  ``IndexBinaryHNSW`` (binary).

Every kind stores the vectors uncompressed, so ``gallery_vectors()`` returns them exactly.

Parameters (``GalleryIndex.build(..., **params)``): ``ivf`` takes ``nlist`` (inverted lists,
trained by k-means on the gallery given to ``build``; default ``min(4 * sqrt(M), M // 39)``,
at least 1) and ``nprobe`` (lists scanned per query, default ``min(nlist, 8)``); ``hnsw`` takes
``M`` (graph degree, default 32; ``m`` is accepted too), ``ef_construction`` (default 40) and
``ef_search`` (default 64). ``flat`` takes none. ``set_search_params`` changes ``nprobe`` /
``ef_search`` later.

Tie order
---------
A query's results are ordered by score (inner product descending, Hamming ascending) and equal
scores by gallery index, lower first: the ranking of ``recog.metrics``. faiss's own order among
equal scores is unspecified, and at the k-th place it may keep any of several tied items, so
``search`` does this:

1. ask faiss for ``k' = min(M, 2k + 16)`` results, re-sort each row by (score, index);
2. the row is settled when the k'-th (last) score differs from the k-th: faiss's top-k' holds
   every item strictly better than its last score, so then it holds *every* item scoring at
   least as well as the k-th, and the first k of the re-sorted row are exactly the true
   top-k with lower indices first. A row is also settled when faiss returned fewer than k'
   results (all candidates were seen) or k' = M (the whole gallery was returned);
3. unsettled rows (ties across the k'-th place) are searched again with ``k'`` four times
   larger, until settled (at worst ``k' = M``, the whole gallery).

For ``flat`` indexes the result is therefore the exact top-k of a brute-force ranking by
(score, index). For ``ivf`` the same holds within the lists probed (the candidates do not depend
on k). ``hnsw`` results depend on k (the search beam is ``max(ef_search, k)``), so they are only
re-sorted by (score, index), without step 2-3.

Scores of real features are faiss's float32 inner products; "equal" means equal as computed by
faiss. With features whose products and sums are exact in float32 (small integers, +-1 codes)
these equal NumPy's; otherwise faiss and NumPy (or one faiss call and another with a different
number of queries) may round a sum differently in the last bit, which can swap items whose
scores agree to float32 precision.

Empty result places (k larger than the gallery, or an approximate index that found fewer than k
candidates) have index -1 and score ``-inf`` (real) or ``2**31 - 1`` (binary), and come last.

Metrics
-------
``GalleryIndex.metrics`` computes ``recog.metrics.retrieval_metrics`` (real) or
``hamming_metrics`` (binary) exactly, in NumPy, on the gallery vectors stored in the index
(every kind here stores them uncompressed, ``gallery_vectors()``): the metrics are those of an
exact search, whatever the index kind, not of the approximate ``ivf`` / ``hnsw`` search.

Saved layout (``save(directory)``): ``index.faiss`` (``faiss.write_index`` or
``write_index_binary``) and ``manifest.json`` (format version, kind, binary, metric, dim,
count, params, labels or null, paths or null). Nothing in either file depends on the time or
on how the gallery was assembled, so a flat index built in two ``add`` steps saves to the same
bytes as one built at once. The pair is written atomically: into a temp directory swapped in
whole (``recog.utils.atomic``), or, when ``directory`` holds other files too, file by file
(temp + rename), the manifest last.
"""

from __future__ import annotations

import json
import math
import operator
import os
from collections.abc import Iterable
from pathlib import Path

import faiss
import numpy as np

from recog.errors import ConfigError, DataError
from recog.metrics import hamming_metrics, retrieval_metrics, unpack_bits
from recog.utils import atomic

__all__ = ["GalleryIndex", "IndexConfigError", "KINDS", "FORMAT_VERSION"]

KINDS = ("flat", "ivf", "hnsw")
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
INDEX_NAME = "index.faiss"
_FORMAT_NAME = "recog.gallery_index"

# Score of an empty result place (index -1).
_MISSING_REAL = np.float32(-np.inf)
_MISSING_BINARY = np.int32(np.iinfo(np.int32).max)

_PARAM_NAMES = {
    "flat": (),
    "ivf": ("nlist", "nprobe"),
    "hnsw": ("M", "ef_construction", "ef_search"),
}
_DEFAULT_EF_CONSTRUCTION = 40
_DEFAULT_EF_SEARCH = 64
_DEFAULT_HNSW_M = 32
_DEFAULT_MAX_NPROBE = 8

# Expected faiss classes per (kind, binary), checked when loading.
_FAISS_CLASSES = {
    ("flat", False): faiss.IndexFlat,
    ("ivf", False): faiss.IndexIVFFlat,
    ("hnsw", False): faiss.IndexHNSWFlat,
    ("flat", True): faiss.IndexBinaryFlat,
    ("ivf", True): faiss.IndexBinaryIVF,
    ("hnsw", True): faiss.IndexBinaryHNSW,
}


class IndexConfigError(ConfigError, ValueError):
    """An unknown index kind or an invalid index parameter."""


class GalleryIndex:
    """A faiss index of gallery vectors with their labels and image paths (see module docstring).

    Make one with ``GalleryIndex.build`` or ``GalleryIndex.load``; the constructor is internal.
    """

    def __init__(self, index, *, kind: str, binary: bool, dim: int, params: dict,
                 labels: np.ndarray | None, paths: list[str] | None):
        self._index = index
        self._kind = kind
        self._binary = bool(binary)
        self._dim = int(dim)
        self._params = dict(params)
        self._labels = labels
        self._paths = paths

    # ------------------------------------------------------------------ construction

    @classmethod
    def build(cls, features_or_codes, labels=None, paths=None, kind: str = "flat",
              binary: bool = False, **params) -> "GalleryIndex":
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
        vectors = _check_vectors(features_or_codes, binary, None, "gallery")
        if len(vectors) == 0:
            raise ValueError("the gallery is empty: nothing to index")
        count = len(vectors)
        labels = _check_labels(labels, count)
        paths = _check_paths(paths, count)
        dim = vectors.shape[1] * 8 if binary else vectors.shape[1]
        params = _check_params(kind, params, count)
        index = _make_faiss_index(kind, bool(binary), dim, params)
        if kind == "ivf":
            index.train(vectors)
        index.add(vectors)
        out = cls(index, kind=kind, binary=bool(binary), dim=dim, params=params, labels=labels, paths=paths)
        out._apply_search_params()
        return out

    def add(self, more, labels=None, paths=None) -> "GalleryIndex":
        """Append gallery items (indices ``ntotal ..``); returns self.

        Labels and paths must be given exactly when the index has them. For ``flat`` the result
        is identical to building from the whole gallery at once; ``ivf`` keeps the lists
        trained on the first gallery (retrain by rebuilding if the data drift); ``hnsw`` inserts
        into its graph.
        """
        vectors = _check_vectors(more, self._binary, self._dim, "added")
        count = len(vectors)
        if (labels is None) != (self._labels is None):
            raise ValueError("the index has labels, give labels for the added items" if labels is None
                             else "the index has no labels: cannot add labelled items")
        if (paths is None) != (self._paths is None):
            raise ValueError("the index has paths, give paths for the added items" if paths is None
                             else "the index has no paths: cannot add items with paths")
        labels = _check_labels(labels, count)
        paths = _check_paths(paths, count)
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
        return (f"GalleryIndex(kind={self._kind!r}, binary={self._binary}, {self._dim} {what}, "
                f"{self.ntotal} items, labels={self._labels is not None}, paths={self._paths is not None}, "
                f"params={self._params})")

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Change ``nprobe`` (ivf) or ``ef_search`` (hnsw) for later searches (and saves)."""
        given = {name: value for name, value in (("nprobe", nprobe), ("ef_search", ef_search)) if value is not None}
        allowed = set(_PARAM_NAMES[self._kind])
        for name, value in given.items():
            if name not in allowed:
                raise IndexConfigError(f"{name} is not a parameter of a {self._kind!r} index")
            self._params[name] = _positive_int(value, name)
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
        k = _positive_int(k, "k")
        queries = _check_vectors(queries, self._binary, self._dim, "query")
        if exclude_self and len(queries) != self.ntotal:
            raise ValueError(f"exclude_self needs the gallery as queries: {len(queries)} queries for "
                             f"{self.ntotal} gallery items")
        if not exclude_self:
            return self._search_sorted(queries, k)
        scores, indices = self._search_sorted(queries, k + 1)
        own = indices == np.arange(len(queries))[:, None]
        keep = ~own
        keep[~own.any(axis=1), -1] = False  # self not in the top k + 1: drop the (k+1)-th
        return scores[keep].reshape(len(queries), k), indices[keep].reshape(len(queries), k)

    def results(self, queries, k: int, query_paths=None, query_labels=None, *,
                exclude_self: bool = False) -> list[dict]:
        """JSON-ready search results.

        Returns one dict per query: ``{"query": path or None, "label": label or None,
        "results": [{"rank", "index", "path", "label", "score"}, ...]}``, best first; ``rank``
        is 1-based; ``path`` / ``label`` are None when the index has none; ``score`` is a float
        (inner product) or an int (Hamming distance). Empty places are left out.
        """
        scores, indices = self.search(queries, k, exclude_self=exclude_self)
        num_queries = len(indices)
        query_paths = _check_paths(query_paths, num_queries, "query")
        query_labels = _check_labels(query_labels, num_queries, "query")
        q_labels = None if query_labels is None else query_labels.tolist()
        g_labels = None if self._labels is None else self._labels
        out = []
        for q in range(num_queries):
            entries = []
            for place, (score, index) in enumerate(zip(scores[q].tolist(), indices[q].tolist())):
                if index < 0:
                    continue
                entries.append({
                    "rank": place + 1,
                    "index": int(index),
                    "path": None if self._paths is None else self._paths[index],
                    "label": None if g_labels is None else g_labels[index].item(),
                    "score": int(score) if self._binary else float(score),
                })
            out.append({
                "query": None if query_paths is None else query_paths[q],
                "label": None if q_labels is None else q_labels[q],
                "results": entries,
            })
        return out

    def metrics(self, queries=None, query_labels=None, recall_at: Iterable[int] = (1, 5, 10),
                block_size: int = 1024) -> dict[str, float | int]:
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
                return hamming_metrics(unpack_bits(gallery, self._dim), self._labels,
                                       recall_at=recall_at, block_size=block_size)
            return retrieval_metrics(gallery, self._labels, recall_at=recall_at, block_size=block_size)
        if queries is None or query_labels is None:
            raise ValueError("give both queries and query_labels, or neither (query set == gallery)")
        if self._binary:
            codes = _check_vectors(queries, True, self._dim, "query")
            return hamming_metrics(unpack_bits(codes, self._dim), query_labels,
                                   unpack_bits(gallery, self._dim), self._labels,
                                   recall_at=recall_at, block_size=block_size)
        _check_vectors(queries, False, self._dim, "query")  # shape and finiteness; passed as given
        return retrieval_metrics(queries, query_labels, gallery, self._labels,
                                 recall_at=recall_at, block_size=block_size)

    # ------------------------------------------------------------------ persistence

    def manifest(self) -> dict:
        """The ``manifest.json`` content."""
        return {
            "format": _FORMAT_NAME,
            "version": FORMAT_VERSION,
            "kind": self._kind,
            "binary": self._binary,
            "metric": "hamming" if self._binary else "inner_product",
            "dim": self._dim,
            "count": self.ntotal,
            "params": dict(self._params),
            "index_file": INDEX_NAME,
            "labels": None if self._labels is None else self._labels.tolist(),
            "paths": None if self._paths is None else list(self._paths),
        }

    def save(self, directory) -> Path:
        """Write ``index.faiss`` and ``manifest.json`` into ``directory`` (created if needed).

        A directory that holds nothing else is replaced whole (``recog.utils.atomic.replacing_dir``),
        so a failed or killed save leaves the previous index; disk full or permission denied raise
        ``recog.utils.atomic.StorageError``.
        """
        directory = Path(directory)
        try:
            text = json.dumps(self.manifest(), indent=1, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise ValueError(f"the labels or paths cannot be written as JSON: {error}") from None
        data = (faiss.serialize_index_binary if self._binary else faiss.serialize_index)(self._index)
        if not directory.is_dir() or set(os.listdir(directory)) <= {INDEX_NAME, MANIFEST_NAME}:
            with atomic.replacing_dir(directory, what="gallery index") as tmp:  # the pair, whole
                atomic.write_file(tmp / INDEX_NAME, data.tobytes())
                atomic.write_file(tmp / MANIFEST_NAME, text + "\n")
        else:  # a folder shared with other files: each file atomically, the manifest last
            atomic.write_bytes(directory / INDEX_NAME, data.tobytes(), what="gallery index file")
            atomic.write_text(directory / MANIFEST_NAME, text + "\n", what="gallery index manifest")
        return directory

    @classmethod
    def load(cls, directory) -> "GalleryIndex":
        """Read an index written by ``save``.

        Raises:
            recog.errors.DataError (a RecogError): the directory, manifest or index file is
                missing, unreadable or inconsistent (counts, sizes, kind).
        """
        directory = Path(directory)
        where = f"gallery index {directory}"
        if not directory.is_dir():
            raise DataError(f"{where}: no such directory (write one with GalleryIndex.save)")
        manifest_path = directory / MANIFEST_NAME
        if not manifest_path.is_file():
            raise DataError(f"{where}: {MANIFEST_NAME} is missing; not a saved gallery index")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DataError(f"{where}: {MANIFEST_NAME} is unreadable or not JSON ({error})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT_NAME:
            raise DataError(f"{where}: {MANIFEST_NAME} is not a recog gallery index manifest")
        if manifest.get("version") != FORMAT_VERSION:
            raise DataError(f"{where}: manifest format version {manifest.get('version')!r} is not "
                            f"supported (this recog reads version {FORMAT_VERSION})")
        kind, binary, dim, count = (manifest.get(key) for key in ("kind", "binary", "dim", "count"))
        params, labels, paths = manifest.get("params"), manifest.get("labels"), manifest.get("paths")
        if (kind not in KINDS or not isinstance(binary, bool) or not _is_int(dim) or dim < 1
                or not _is_int(count) or count < 0 or not isinstance(params, dict)
                or set(params) - set(_PARAM_NAMES[kind])
                or not all(_is_int(v) and v >= 1 for v in params.values())
                or not (labels is None or isinstance(labels, list))
                or not (paths is None or (isinstance(paths, list) and all(isinstance(p, str) for p in paths)))):
            raise DataError(f"{where}: {MANIFEST_NAME} has missing or invalid fields "
                            "(kind, binary, dim, count, params, labels, paths)")
        if labels is not None and len(labels) != count:
            raise DataError(f"{where}: the manifest has {len(labels)} labels for {count} items")
        if paths is not None and len(paths) != count:
            raise DataError(f"{where}: the manifest has {len(paths)} paths for {count} items")
        index_path = directory / INDEX_NAME
        if not index_path.is_file():
            raise DataError(f"{where}: the index file {INDEX_NAME} is missing")
        try:
            index = (faiss.read_index_binary if binary else faiss.read_index)(str(index_path))
        except (RuntimeError, MemoryError) as error:
            first_line = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
            raise DataError(f"{where}: cannot read {INDEX_NAME} as a faiss "
                            f"{'binary ' if binary else ''}index ({first_line})") from None
        expected = _FAISS_CLASSES[(kind, binary)]
        if not isinstance(index, expected) or (
                not binary and index.metric_type != faiss.METRIC_INNER_PRODUCT):
            raise DataError(f"{where}: {INDEX_NAME} holds a {type(index).__name__} (metric "
                            f"{getattr(index, 'metric_type', '?')}), not the {kind!r} "
                            f"{'Hamming' if binary else 'inner-product'} index the manifest describes")
        if index.d != dim:
            raise DataError(f"{where}: {INDEX_NAME} has dimension {index.d}, the manifest {dim}")
        if index.ntotal != count:
            raise DataError(f"{where}: {INDEX_NAME} holds {index.ntotal} vectors, the manifest "
                            f"lists {count} items")
        if labels is not None:
            labels = np.asarray(labels)
            if labels.ndim != 1 or labels.dtype.kind not in "iubU":
                raise DataError(f"{where}: the manifest's labels must all be integers or all strings")
        out = cls(index, kind=kind, binary=binary, dim=dim, params=params, labels=labels, paths=paths)
        out._apply_search_params()
        return out

    # ------------------------------------------------------------------ internals

    def _apply_search_params(self) -> None:
        if self._kind == "ivf":
            self._index.nprobe = min(self._params["nprobe"], self._params["nlist"])
        elif self._kind == "hnsw":
            self._index.hnsw.efSearch = self._params["ef_search"]

    def _search_sorted(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows sorted by (score, index) with the tie handling of the module docstring."""
        num_queries, total = len(queries), self.ntotal
        missing = _MISSING_BINARY if self._binary else _MISSING_REAL
        scores = np.full((num_queries, k), missing, dtype=np.int32 if self._binary else np.float32)
        indices = np.full((num_queries, k), -1, dtype=np.int64)
        if num_queries == 0 or total == 0:
            return scores, indices
        if self._kind == "hnsw":  # candidates depend on k: re-sort only
            row_scores, row_indices = self._faiss_search_sorted(queries, min(k, total))
            width = row_scores.shape[1]
            scores[:, :width], indices[:, :width] = row_scores, row_indices
            return scores, indices
        fetch = min(total, 2 * k + 16)
        todo = np.arange(num_queries)
        while todo.size:
            row_scores, row_indices = self._faiss_search_sorted(queries[todo], fetch)
            width = min(k, fetch)
            if fetch >= total:
                settled = np.ones(len(todo), dtype=bool)
            else:
                exhausted = row_indices[:, -1] < 0  # fewer than `fetch` candidates exist
                settled = exhausted | (row_scores[:, k - 1] != row_scores[:, -1])
            rows = todo[settled]
            scores[rows, :width] = row_scores[settled, :width]
            indices[rows, :width] = row_indices[settled, :width]
            todo = todo[~settled]
            fetch = min(total, fetch * 4)
        return scores, indices

    def _faiss_search_sorted(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """faiss's top-k, each row re-sorted by (score, index); empty places last."""
        distances, labels = self._index.search(queries, k)
        empty = labels < 0
        primary = distances.astype(np.int64) if self._binary else -distances.astype(np.float64)
        # np.lexsort: the last key is the primary one.
        order = np.lexsort((labels, primary, empty), axis=-1)
        distances = np.take_along_axis(distances, order, axis=1)
        labels = np.take_along_axis(labels, order, axis=1).astype(np.int64, copy=False)
        empty = labels < 0
        if self._binary:
            distances = distances.astype(np.int32, copy=False)
            distances[empty] = _MISSING_BINARY
        else:
            distances = distances.astype(np.float32, copy=False)
            distances[empty] = _MISSING_REAL
        return distances, labels


# ---------------------------------------------------------------------- helpers


def _make_faiss_index(kind: str, binary: bool, dim: int, params: dict):
    if binary:
        if kind == "flat":
            return faiss.IndexBinaryFlat(dim)
        if kind == "ivf":
            # faiss's Python wrapper keeps the quantizer alive (index.referenced_objects).
            return faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(dim), dim, params["nlist"])
        index = faiss.IndexBinaryHNSW(dim, params["M"])
    else:
        if kind == "flat":
            return faiss.IndexFlatIP(dim)
        if kind == "ivf":
            return faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, params["nlist"],
                                      faiss.METRIC_INNER_PRODUCT)
        index = faiss.IndexHNSWFlat(dim, params["M"], faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = params["ef_construction"]
    index.hnsw.efSearch = params["ef_search"]
    return index


def _check_params(kind: str, params: dict, count: int) -> dict:
    params = dict(params)
    if kind == "hnsw" and "m" in params:
        if "M" in params:
            raise IndexConfigError("give the HNSW degree once, as M (or m)")
        params["M"] = params.pop("m")
    unknown = sorted(set(params) - set(_PARAM_NAMES[kind]))
    if unknown:
        allowed = ", ".join(_PARAM_NAMES[kind]) or "none"
        raise IndexConfigError(f"unknown parameter(s) {', '.join(unknown)} for a {kind!r} gallery "
                               f"index (allowed: {allowed})")
    out = {name: _positive_int(value, name) for name, value in params.items() if value is not None}
    if kind == "ivf":
        if "nlist" not in out:
            out["nlist"] = max(1, min(int(round(4 * math.sqrt(count))), count // 39))
        if out["nlist"] > count:
            raise IndexConfigError(f"nlist={out['nlist']} inverted lists need at least as many "
                                   f"gallery items for training, got {count}")
        out.setdefault("nprobe", min(out["nlist"], _DEFAULT_MAX_NPROBE))
    elif kind == "hnsw":
        out.setdefault("M", _DEFAULT_HNSW_M)
        out.setdefault("ef_construction", _DEFAULT_EF_CONSTRUCTION)
        out.setdefault("ef_search", _DEFAULT_EF_SEARCH)
        if out["M"] < 2:
            raise IndexConfigError(f"HNSW M must be at least 2, got {out['M']}")
    return {name: out[name] for name in _PARAM_NAMES[kind] if name in out}


def _positive_int(value, name: str) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise IndexConfigError(f"{name} must be a positive integer, got {value!r}") from None
    if value < 1:
        raise IndexConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_vectors(vectors, binary: bool, dim: int | None, name: str) -> np.ndarray:
    """float32 ``[N, D]`` features or uint8 ``[N, B]`` codes, C-contiguous, as faiss needs."""
    array = np.asarray(vectors)
    if binary:
        if array.ndim != 2 or array.dtype != np.uint8 or array.shape[1] == 0:
            raise ValueError(f"{name} codes must be bit-packed uint8 [N, B] (recog.metrics.pack_bits), "
                             f"got {array.dtype} {array.shape}")
        if dim is not None and array.shape[1] * 8 != dim:
            raise ValueError(f"{name} codes have {array.shape[1] * 8} bits, the index {dim}")
        return np.ascontiguousarray(array)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating) or array.shape[1] == 0:
        raise ValueError(f"{name} features must be a float [N, D] array, got {array.dtype} {array.shape}")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(f"{name} features have size {array.shape[1]}, the index {dim}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} features contain inf or nan (or values beyond float32)")
    return array


def _check_labels(labels, count: int, name: str = "gallery") -> np.ndarray | None:
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.shape != (count,):
        raise ValueError(f"{name} labels must have shape ({count},), got {labels.shape}")
    if count and labels.dtype.kind not in "iubU":
        raise ValueError(f"{name} labels must be integers or strings, got dtype {labels.dtype}")
    return labels


def _check_paths(paths, count: int, name: str = "gallery") -> list[str] | None:
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

