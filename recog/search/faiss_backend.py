"""The faiss side of the gallery index: which faiss index each kind is, its parameters, and a
search whose order among equal scores is fixed (``recog.search.index`` holds the conventions).

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

"""

from __future__ import annotations

import math
import operator

import faiss
import numpy as np

from recog.errors import ConfigError

KINDS = ("flat", "ivf", "hnsw")

# Score of an empty result place (index -1).
MISSING_REAL = np.float32(-np.inf)
MISSING_BINARY = np.int32(np.iinfo(np.int32).max)

PARAM_NAMES = {
    "flat": (),
    "ivf": ("nlist", "nprobe"),
    "hnsw": ("M", "ef_construction", "ef_search"),
}
DEFAULT_EF_CONSTRUCTION = 40
DEFAULT_EF_SEARCH = 64
DEFAULT_HNSW_M = 32
DEFAULT_MAX_NPROBE = 8

# Expected faiss classes per (kind, binary), checked when loading.
FAISS_CLASSES = {
    ("flat", False): faiss.IndexFlat,
    ("ivf", False): faiss.IndexIVFFlat,
    ("hnsw", False): faiss.IndexHNSWFlat,
    ("flat", True): faiss.IndexBinaryFlat,
    ("ivf", True): faiss.IndexBinaryIVF,
    ("hnsw", True): faiss.IndexBinaryHNSW,
}


class IndexConfigError(ConfigError, ValueError):
    """An unknown index kind or an invalid index parameter."""


def make_faiss_index(kind: str, binary: bool, dim: int, params: dict):
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
            return faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, params["nlist"], faiss.METRIC_INNER_PRODUCT)
        index = faiss.IndexHNSWFlat(dim, params["M"], faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = params["ef_construction"]
    index.hnsw.efSearch = params["ef_search"]
    return index


def check_params(kind: str, params: dict, count: int) -> dict:
    params = dict(params)
    if kind == "hnsw" and "m" in params:
        if "M" in params:
            raise IndexConfigError("give the HNSW degree once, as M (or m)")
        params["M"] = params.pop("m")
    unknown = sorted(set(params) - set(PARAM_NAMES[kind]))
    if unknown:
        allowed = ", ".join(PARAM_NAMES[kind]) or "none"
        raise IndexConfigError(
            f"unknown parameter(s) {', '.join(unknown)} for a {kind!r} gallery index (allowed: {allowed})"
        )
    out = {name: positive_int(value, name) for name, value in params.items() if value is not None}
    if kind == "ivf":
        if "nlist" not in out:
            out["nlist"] = max(1, min(int(round(4 * math.sqrt(count))), count // 39))
        if out["nlist"] > count:
            raise IndexConfigError(
                f"nlist={out['nlist']} inverted lists need at least as many gallery items for training, got {count}"
            )
        out.setdefault("nprobe", min(out["nlist"], DEFAULT_MAX_NPROBE))
    elif kind == "hnsw":
        out.setdefault("M", DEFAULT_HNSW_M)
        out.setdefault("ef_construction", DEFAULT_EF_CONSTRUCTION)
        out.setdefault("ef_search", DEFAULT_EF_SEARCH)
        if out["M"] < 2:
            raise IndexConfigError(f"HNSW M must be at least 2, got {out['M']}")
    return {name: out[name] for name in PARAM_NAMES[kind] if name in out}


def positive_int(value, name: str) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise IndexConfigError(f"{name} must be a positive integer, got {value!r}") from None
    if value < 1:
        raise IndexConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_vectors(vectors, binary: bool, dim: int | None, name: str) -> np.ndarray:
    """float32 ``[N, D]`` features or uint8 ``[N, B]`` codes, C-contiguous, as faiss needs."""
    array = np.asarray(vectors)
    if binary:
        if array.ndim != 2 or array.dtype != np.uint8 or array.shape[1] == 0:
            raise ValueError(
                f"{name} codes must be bit-packed uint8 [N, B] (recog.metrics.pack_bits), "
                f"got {array.dtype} {array.shape}"
            )
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


def apply_search_params(index, kind: str, params: dict) -> None:
    """Set ``nprobe`` (ivf) or ``efSearch`` (hnsw) of the faiss ``index`` from ``params``."""
    if kind == "ivf":
        index.nprobe = min(params["nprobe"], params["nlist"])
    elif kind == "hnsw":
        index.hnsw.efSearch = params["ef_search"]


def search_sorted(index, kind: str, binary: bool, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows of faiss ``index`` (of ``kind``) sorted by (score, index) with the tie handling of
    the module docstring: ``scores [Q, k]`` and ``indices [Q, k]``, empty places last."""
    num_queries, total = len(queries), int(index.ntotal)
    missing = MISSING_BINARY if binary else MISSING_REAL
    scores = np.full((num_queries, k), missing, dtype=np.int32 if binary else np.float32)
    indices = np.full((num_queries, k), -1, dtype=np.int64)
    if num_queries == 0 or total == 0:
        return scores, indices
    if kind == "hnsw":  # candidates depend on k: re-sort only
        row_scores, row_indices = _faiss_search_sorted(index, binary, queries, min(k, total))
        width = row_scores.shape[1]
        scores[:, :width], indices[:, :width] = row_scores, row_indices
        return scores, indices
    fetch = min(total, 2 * k + 16)
    todo = np.arange(num_queries)
    while todo.size:
        row_scores, row_indices = _faiss_search_sorted(index, binary, queries[todo], fetch)
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


def _faiss_search_sorted(index, binary: bool, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """faiss's top-k, each row re-sorted by (score, index); empty places last."""
    distances, labels = index.search(queries, k)
    empty = labels < 0
    primary = distances.astype(np.int64) if binary else -distances.astype(np.float64)
    # np.lexsort: the last key is the primary one.
    order = np.lexsort((labels, primary, empty), axis=-1)
    distances = np.take_along_axis(distances, order, axis=1)
    labels = np.take_along_axis(labels, order, axis=1).astype(np.int64, copy=False)
    empty = labels < 0
    if binary:
        distances = distances.astype(np.int32, copy=False)
        distances[empty] = MISSING_BINARY
    else:
        distances = distances.astype(np.float32, copy=False)
        distances[empty] = MISSING_REAL
    return distances, labels
