"""Gallery search over faiss: build, edit, search, save and load an index of gallery vectors.

(Over 300 lines: one class whose search, edits and saved form keep one set of invariants.)

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

Entries, ids and edits
----------------------
Search results name gallery entries by their *index*: the entry's place among the live entries
(0..ntotal-1, in the order they were added), which ``labels``, ``paths`` and ``gallery_vectors()``
follow. Each entry also has an *id* (``ids``), fixed when it is added and never reused: ``remove``
takes ids, so an edit never renames the other entries. ``flat`` and ``ivf`` remove in place; HNSW
marks entries deleted (searches skip them) and rebuilds its graph from the live vectors once more
than ``rebuild_fraction`` of its nodes are deleted. Every build, add and remove is recorded in
``edits`` (saved in the manifest).

The model
---------
``model`` is the SHA-256 of the ``manifest.json`` of the export whose features the index holds
(``recog.search.binding.model_digest``; None when unknown). ``check_model`` refuses features of
another export with a ``ModelMismatchError`` that says how to re-index (``stage=index`` re-embeds
the stored paths).

Metrics
-------
``GalleryIndex.metrics`` computes ``recog.metrics.retrieval_metrics`` (real) or
``hamming_metrics`` (binary) exactly, in NumPy, on the gallery vectors stored in the index
(every kind here stores them uncompressed, ``gallery_vectors()``): the metrics are those of an
exact search, whatever the index kind, not of the approximate ``ivf`` / ``hnsw`` search.

"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from recog.metrics import hamming_metrics, retrieval_metrics, unpack_bits
from recog.search import store
from recog.search.binding import ModelMismatchError, check_ids, check_model, id_array, model_digest, places
from recog.search.faiss_backend import (
    KINDS,
    PARAM_NAMES,
    IndexConfigError,
    add_vectors,
    apply_search_params,
    check_params,
    check_vectors,
    make_faiss_index,
    positive_int,
    remove_vectors,
    search_sorted,
    stored_vectors,
)
from recog.search.results import RetrievalResults, check_labels, check_paths
from recog.search.store import FORMAT_NAME, FORMAT_VERSION

__all__ = [
    "GalleryIndex",
    "IndexConfigError",
    "KINDS",
    "FORMAT_VERSION",
    "ModelMismatchError",
    "RetrievalResults",
    "model_digest",
]

log = logging.getLogger(__name__)

DEFAULT_REBUILD_FRACTION = 0.2  # HNSW: rebuild once more than this share of the graph is deleted


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
        ids: np.ndarray,
        next_id: int,
        deleted_slots: np.ndarray | None = None,
        model: str | None = None,
        edits: list | None = None,
    ):
        self._index = index
        self._kind = kind
        self._binary = bool(binary)
        self._dim = int(dim)
        self._params = dict(params)
        self._labels = labels
        self._paths = paths
        self._ids = np.asarray(ids, dtype=np.int64)
        self._next_id = int(next_id)
        self._model = model
        self._edits = list(edits or [])
        self.rebuild_fraction = DEFAULT_REBUILD_FRACTION
        # HNSW only: the id of each faiss slot (node), -1 where the node is deleted.
        self._slot_ids = None
        if kind == "hnsw":
            self._slot_ids = np.full(int(index.ntotal), -1, dtype=np.int64)
            deleted = np.asarray([] if deleted_slots is None else deleted_slots, np.int64)
            self._slot_ids[np.setdiff1d(np.arange(int(index.ntotal)), deleted)] = self._ids

    # ------------------------------------------------------------------ construction

    @classmethod
    def build(
        cls,
        features_or_codes,
        labels=None,
        paths=None,
        kind: str = "flat",
        binary: bool = False,
        *,
        ids=None,
        model: str | None = None,
        source: str | None = None,
        **params,
    ) -> GalleryIndex:
        """Index a gallery.

        Args:
            features_or_codes: ``[M, D]`` float features (``binary=False``) or bit-packed codes
                ``[M, D / 8] uint8`` (``binary=True``, from ``recog.metrics.pack_bits``); M >= 1.
            labels: ``[M]`` integer or string labels, or None.
            paths: M image paths (any path-like, stored as str), or None.
            kind: ``flat``, ``ivf`` or ``hnsw``.
            ids: ``[M]`` ascending unique ids (default 0..M-1), e.g. those of an index re-embedded.
            model: the SHA-256 of the export that computed the features (``model_digest``), or None.
            source: where the gallery came from (a list file or folder), for the edit history.
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
        ids = np.arange(count, dtype=np.int64) if ids is None else check_ids(ids, count)
        index = make_faiss_index(kind, bool(binary), dim, params)
        if kind == "ivf":
            index.train(vectors)
        add_vectors(index, kind, vectors, ids)
        out = cls(
            index,
            kind=kind,
            binary=bool(binary),
            dim=dim,
            params=params,
            labels=labels,
            paths=paths,
            ids=ids,
            next_id=int(ids[-1]) + 1,
            model=model,
        )
        out._record("build", count=count, source=source)
        out._apply_search_params()
        return out

    def add(self, more, labels=None, paths=None, *, source: str | None = None) -> GalleryIndex:
        """Append gallery items (indices ``ntotal ..``, new ids from ``next_id`` on: the last
        ``len(more)`` of ``ids``); returns self.

        Labels and paths must be given exactly when the index has them. For ``flat`` the result
        is identical to building from the whole gallery at once; ``ivf`` keeps the lists
        trained on the first gallery (retrain by rebuilding if the data drift); ``hnsw`` inserts
        into its graph. ``source`` (a list file or folder) goes into the edit history.
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
            if kinds[0] != kinds[1] and len(self._labels):  # an emptied gallery takes either kind
                raise ValueError(f"the index has {kinds[0]} labels, the added items {kinds[1]} ones")
            merged = np.concatenate([self._labels, labels]) if len(self._labels) else labels
        new_ids = np.arange(self._next_id, self._next_id + count, dtype=np.int64)
        add_vectors(self._index, self._kind, vectors, new_ids)
        if self._slot_ids is not None:
            self._slot_ids = np.concatenate([self._slot_ids, new_ids])
        self._ids = np.concatenate([self._ids, new_ids])
        self._next_id += count
        if labels is not None:
            self._labels = merged
        if paths is not None:
            self._paths = self._paths + paths
        self._record("add", ids=[int(new_ids[0]), int(new_ids[-1])], count=count, source=source)
        return self

    def remove(self, ids) -> int:
        """Remove the entries with these ids (an iterable of ints); returns how many were removed.

        ``flat`` and ``ivf`` remove in place; ``hnsw`` marks the nodes deleted and rebuilds the
        graph from the live vectors once more than ``rebuild_fraction`` of it is deleted. The
        other entries keep their ids (their indices, places among the live entries, shift down).

        Raises:
            ValueError: an id that is not an integer, or that no live entry has (all named).
        """
        wanted = id_array(ids)
        unknown = np.setdiff1d(wanted, self._ids)
        if len(unknown):
            shown = ", ".join(str(i) for i in unknown[:20]) + (" ..." if len(unknown) > 20 else "")
            raise ValueError(
                f"no gallery entry has id {shown} ({len(self._ids)} entries, ids "
                f"{self._describe_ids()}; removed ids are not reused)"
            )
        if not len(wanted):
            return 0
        keep = ~np.isin(self._ids, wanted)
        if self._slot_ids is None:
            removed = remove_vectors(self._index, wanted)
            if removed != len(wanted):
                raise RuntimeError(f"faiss removed {removed} of {len(wanted)} entries")  # an invariant broken
        else:
            self._slot_ids[np.isin(self._slot_ids, wanted)] = -1
        self._ids = self._ids[keep]
        if self._labels is not None:
            self._labels = self._labels[keep]
        if self._paths is not None:
            self._paths = [path for path, kept in zip(self._paths, keep.tolist()) if kept]
        self._record("remove", ids=wanted.tolist(), count=int(len(wanted)))
        if self._slot_ids is not None and self.deleted_fraction > self.rebuild_fraction:
            self.rebuild(reason=f"{self.deleted_fraction:.0%} of the HNSW graph deleted")
        return int(len(wanted))

    def reembedded(self, vectors, ids, model: str | None, binary: bool | None = None) -> GalleryIndex:
        """A new index of the same kind and parameters holding another model's ``vectors`` of the
        entries ``ids`` (ascending, a subset of ``ids``: entries left out are dropped), keeping their
        ids, labels, paths and this index's history (plus a ``reembed`` edit)."""
        keep_ids = check_ids(ids, len(ids))
        missing = np.setdiff1d(keep_ids, self._ids)
        if len(missing):
            raise ValueError(f"re-embedded ids {missing[:10].tolist()} are not in the index")
        keep = np.isin(self._ids, keep_ids)
        labels = None if self._labels is None else self._labels[keep]
        paths = None if self._paths is None else [p for p, kept in zip(self._paths, keep.tolist()) if kept]
        binary = self._binary if binary is None else bool(binary)
        params = {k: v for k, v in self._params.items() if not (k == "nlist" and v > len(keep_ids))}
        out = GalleryIndex.build(
            vectors, labels, paths, kind=self._kind, binary=binary, ids=keep_ids, model=model, **params
        )
        out._next_id = self._next_id
        out._edits = self.edits
        dropped = np.setdiff1d(self._ids, keep_ids)
        out._record("reembed", count=out.ntotal, model=model, dropped=dropped.tolist() or None)
        return out

    def rebuild(self, reason: str = "asked") -> GalleryIndex:
        """A new faiss index of the live entries (same kind, parameters and ids; ``ivf`` keeps its
        trained lists); HNSW's deleted nodes are gone afterwards. Returns self."""
        vectors = self.gallery_vectors()
        if self._kind == "ivf":
            self._index.reset()
            fresh = self._index
        else:
            fresh = make_faiss_index(self._kind, self._binary, self._dim, self._params)
        if len(vectors):
            add_vectors(fresh, self._kind, vectors, self._ids)
        self._index = fresh
        if self._slot_ids is not None:
            self._slot_ids = self._ids.copy()
        self._apply_search_params()
        self._record("rebuild", count=self.ntotal, reason=reason)
        log.info("gallery index rebuilt from its %d live entries (%s)", self.ntotal, reason)
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
        """The number of (live) gallery entries."""
        return len(self._ids)

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
    def ids(self) -> np.ndarray:
        """``[ntotal]`` int64 ids of the entries, ascending (a copy)."""
        return self._ids.copy()

    @property
    def next_id(self) -> int:
        """The id the next added entry gets."""
        return self._next_id

    @property
    def model(self) -> str | None:
        """The SHA-256 of the export's manifest that embedded the gallery (``model_digest``), or None."""
        return self._model

    @property
    def edits(self) -> list[dict]:
        """The index's history: one dict per build, add, remove, rebuild and re-embedding (a copy)."""
        return [dict(edit) for edit in self._edits]

    @property
    def deleted_fraction(self) -> float:
        """The share of HNSW nodes marked deleted (0 for ``flat`` / ``ivf``, which remove in place)."""
        if self._slot_ids is None or not len(self._slot_ids):
            return 0.0
        return float(np.mean(self._slot_ids < 0))

    def check_model(self, digest: str | None, index_dir=None, export_dir=None) -> None:
        """``ModelMismatchError`` when the index was embedded by another export than the one whose
        ``model_digest`` is ``digest`` (saying how to re-index); a warning when either is unknown."""
        check_model(self._model, digest, index_dir, export_dir)

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
            f"params={self._params}, ids {self._describe_ids()})"
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
        """A copy of the stored gallery: ``[M, D] float32`` features or ``[M, D / 8] uint8`` codes,
        in index order (the order of ``ids``, ``labels`` and ``paths``)."""
        width = self._dim // 8 if self._binary else self._dim
        if not self.ntotal:
            return np.zeros((0, width), np.uint8 if self._binary else np.float32)
        labels, vectors = stored_vectors(self._index, self._kind)
        if self._slot_ids is not None:
            return vectors[self._slot_ids[labels] >= 0]
        return vectors  # flat, ivf: ids ascending, as self._ids

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
            return self._searchplaces(queries, k)
        scores, indices = self._searchplaces(queries, k + 1)
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
        """The ``manifest.json`` content (``recog.search.store``; the index file's size and SHA-256
        are added when saving)."""
        deleted = [] if self._slot_ids is None else np.flatnonzero(self._slot_ids < 0).tolist()
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "kind": self._kind,
            "binary": self._binary,
            "metric": "hamming" if self._binary else "inner_product",
            "dim": self._dim,
            "count": self.ntotal,
            "params": dict(self._params),
            "index_file": store.INDEX_NAME,
            "ids": self._ids.tolist(),
            "next_id": self._next_id,
            "deleted_slots": deleted,
            "model": self._model,
            "labels": None if self._labels is None else self._labels.tolist(),
            "paths": None if self._paths is None else list(self._paths),
            "edits": self._edits,
        }

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

    def _searchplaces(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``search_sorted`` with faiss's labels (ids, or HNSW slots) turned into indices (places
        among the live entries); deleted HNSW nodes skipped."""
        if self._slot_ids is None:
            scores, labels = search_sorted(self._index, self._kind, self._binary, queries, k)
            return scores, places(self._ids, labels)
        deleted = int(np.sum(self._slot_ids < 0))
        scores, slots = search_sorted(self._index, self._kind, self._binary, queries, k + deleted)
        ids = np.where(slots >= 0, self._slot_ids[np.maximum(slots, 0)], -1)
        live = (ids >= 0).astype(np.int8)
        order = np.argsort(-live, axis=1, kind="stable")[:, :k]  # live results first, in their order
        scores, ids = np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)
        empty = np.take_along_axis(live, order, axis=1) == 0
        scores[empty] = scores.dtype.type(np.iinfo(np.int32).max if self._binary else -np.inf)
        return scores, places(self._ids, ids)

    def _record(self, op: str, **fields) -> None:
        entry = {"op": op, **{key: value for key, value in fields.items() if value is not None}}
        entry["time"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self._edits.append(entry)

    def _describe_ids(self) -> str:
        if not len(self._ids):
            return "none"
        return f"{self._ids[0]}..{self._ids[-1]}" if len(self._ids) > 1 else str(self._ids[0])
