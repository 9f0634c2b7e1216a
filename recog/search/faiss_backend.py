"""The faiss side of the gallery index: which faiss index each kind is, its parameters, and a
search whose order among equal scores is fixed (``recog.search.index`` holds the conventions).

Index kinds:

* ``flat``: exact search; ``IndexFlatIP`` (real), ``IndexBinaryFlat`` (binary), each inside an
  ``IndexIDMap2`` / ``IndexBinaryIDMap2`` so that faiss returns the entries' ids;
* ``ivf``: approximate, for large galleries; ``IndexIVFFlat`` with inner product (real),
  ``IndexBinaryIVF`` (binary); trained (k-means) on the gallery given to ``build``; stores the ids;
* ``hnsw``: approximate graph search; ``IndexHNSWFlat`` with inner product (real),
  ``IndexBinaryHNSW`` (binary); faiss numbers its entries 0, 1, ... in insertion order ("slots").

Every kind stores the vectors uncompressed, so ``gallery_vectors()`` returns them exactly.

Ids and removal
---------------
Every gallery entry has an id (int64, never reused). ``flat`` and ``ivf`` hold the ids themselves
(``add_with_ids``) and remove entries in place (``remove_ids``; the flat storage is compacted, keeping
its order). HNSW graphs cannot delete: ``recog.search.index`` keeps a slot -> id table, marks removed
slots deleted (searches skip them) and rebuilds the graph from the live vectors once the deleted
share passes a set fraction. Old (format 1) flat indexes without ids are wrapped on load, ids 0..M-1.

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

# Expected faiss classes per (kind, binary), checked when loading (a flat index inside its id map).
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
    """An empty faiss index of ``kind`` (``flat``: inside its id map)."""
    if kind == "flat":
        return with_id_map(faiss.IndexBinaryFlat(dim) if binary else faiss.IndexFlatIP(dim), binary)
    if binary:
        if kind == "ivf":
            # faiss's Python wrapper keeps the quantizer alive (index.referenced_objects).
            return faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(dim), dim, params["nlist"])
        index = faiss.IndexBinaryHNSW(dim, params["M"])
    else:
        if kind == "ivf":
            return faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, params["nlist"], faiss.METRIC_INNER_PRODUCT)
        index = faiss.IndexHNSWFlat(dim, params["M"], faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = params["ef_construction"]
    index.hnsw.efSearch = params["ef_search"]
    return index


def with_id_map(flat, binary: bool):
    """``flat`` (an ``IndexFlat`` / ``IndexBinaryFlat``) inside an id map; the entries it already
    holds get ids 0..ntotal-1 (how a format-1 flat index is read)."""
    stored = flat.reconstruct_n(0, flat.ntotal) if flat.ntotal else None
    if stored is not None:
        flat.reset()
    wrapped = faiss.IndexBinaryIDMap2(flat) if binary else faiss.IndexIDMap2(flat)
    wrapped.referenced_objects = [flat]  # keep the inner index alive as long as the map
    if stored is not None:
        wrapped.add_with_ids(stored, np.arange(len(stored), dtype=np.int64))
    return wrapped


def inner_index(index):
    """The storage of an id-mapped flat index (the index itself for the other kinds)."""
    if isinstance(index, faiss.IndexBinaryIDMap2):
        return faiss.downcast_IndexBinary(index.index)
    if isinstance(index, faiss.IndexIDMap2):
        return faiss.downcast_index(index.index)
    return index


def add_vectors(index, kind: str, vectors: np.ndarray, ids: np.ndarray) -> None:
    """Append ``vectors`` with their ``ids`` (``hnsw``: in slot order, the ids kept by the caller)."""
    if kind == "hnsw":
        index.add(vectors)
    else:
        index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))


def remove_vectors(index, ids: np.ndarray) -> int:
    """Remove the entries ``ids`` of a ``flat`` / ``ivf`` index in place; returns how many went."""
    return int(index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))))


def stored_ids(index, kind: str) -> np.ndarray:
    """The ids a ``flat`` / ``ivf`` index holds, ascending (without reading the vectors)."""
    if kind == "flat":
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    invlists = faiss.downcast_InvertedLists(index.invlists)
    found = [np.zeros(0, np.int64)]
    for list_no in range(index.nlist):
        size = invlists.list_size(list_no)
        if size:
            ids = invlists.get_ids(list_no)
            try:
                found.append(faiss.rev_swig_ptr(ids, size).astype(np.int64))  # a copy
            finally:
                invlists.release_ids(list_no, ids)
    return np.sort(np.concatenate(found))


def stored_vectors(index, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """``(faiss labels [M] int64, vectors [M, ...])`` of every stored entry: ids ascending for
    ``flat`` / ``ivf``, slots ascending for ``hnsw`` (deleted slots included)."""
    if kind == "flat":
        return faiss.vector_to_array(index.id_map).astype(np.int64), inner_index(index).reconstruct_n(0, index.ntotal)
    if kind == "hnsw":
        return np.arange(index.ntotal, dtype=np.int64), index.reconstruct_n(0, index.ntotal)
    from faiss.contrib.inspect_tools import get_invlist

    binary = isinstance(index, faiss.IndexBinary)
    width = index.code_size
    labels, codes = [np.zeros(0, np.int64)], [np.zeros((0, width), np.uint8)]
    for list_no in range(index.nlist):
        ids, list_codes = get_invlist(index.invlists, list_no)
        labels.append(np.asarray(ids, dtype=np.int64))
        codes.append(np.asarray(list_codes, dtype=np.uint8).reshape(-1, width))
    labels, codes = np.concatenate(labels), np.concatenate(codes)
    order = np.argsort(labels, kind="stable")
    vectors = codes[order] if binary else codes[order].view(np.float32)
    return labels[order], np.ascontiguousarray(vectors)


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
