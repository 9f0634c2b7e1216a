"""The on-disk gallery index: ``index.faiss`` beside ``manifest.json``, written atomically, and
read back only after the manifest and the index file agree (anything else is a ``DataError``).

Saved layout (``save(directory)``): ``index.faiss`` (``faiss.write_index`` or
``write_index_binary``) and ``manifest.json``::

    {"format": "recog.gallery_index", "version": 2, "kind": "flat", "binary": false,
     "metric": "inner_product", "dim": 128, "count": 3, "params": {},
     "index_file": "index.faiss", "index_size": 1234, "index_sha256": "...",
     "ids": [0, 1, 5], "next_id": 6, "deleted_slots": [],
     "model": "<SHA-256 of the export's manifest.json that embedded the gallery>" | null,
     "labels": [...] | null, "paths": [...] | null,
     "edits": [{"op": "build", "count": 4, "time": "..."}, {"op": "remove", "ids": [2, 3], ...}, ...]}

``ids`` are the live entries' ids, ascending, aligned with ``labels`` and ``paths``; ``next_id`` is
the id the next added entry gets (ids are never reused); ``deleted_slots`` lists the HNSW graph
nodes marked deleted (always empty for ``flat`` / ``ivf``, which remove in place). ``edits`` is the
index's history: each build, add, remove, rebuild and re-embedding with its ids, count, source and
time. The index file's size and SHA-256 are checked before faiss parses it.

The pair is written atomically: into a temp directory swapped in whole (``recog.utils.atomic``),
or, when ``directory`` holds other files too, file by file (temp + rename), the manifest last.
Format-1 manifests (before ids) are read too: ids 0..count-1, no model, no history.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import faiss
import numpy as np

from recog.errors import DataError
from recog.search.faiss_backend import FAISS_CLASSES, KINDS, PARAM_NAMES, inner_index, stored_ids, with_id_map
from recog.utils import atomic

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
FORMAT_NAME = "recog.gallery_index"
MANIFEST_NAME = "manifest.json"
INDEX_NAME = "index.faiss"
MAX_MANIFEST_BYTES = 1 << 30  # labels and paths of a very large gallery; beyond: not a manifest


def save(directory, index, binary: bool, manifest_content: dict) -> Path:
    """Write the faiss ``index`` and ``manifest_content`` (plus the index file's size and SHA-256)
    into ``directory`` (created if needed).

    A directory that holds nothing else is replaced whole (``recog.utils.atomic.replacing_dir``),
    so a failed or killed save leaves the previous index; disk full or permission denied raise
    ``recog.utils.atomic.StorageError``.
    """
    directory = Path(directory)
    data = (faiss.serialize_index_binary if binary else faiss.serialize_index)(index).tobytes()
    content = dict(manifest_content, index_size=len(data), index_sha256=hashlib.sha256(data).hexdigest())
    try:
        text = json.dumps(content, indent=1, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"the labels or paths cannot be written as JSON: {error}") from None
    if not directory.is_dir() or set(os.listdir(directory)) <= {INDEX_NAME, MANIFEST_NAME}:
        with atomic.replacing_dir(directory, what="gallery index") as tmp:  # the pair, whole
            atomic.write_file(tmp / INDEX_NAME, data)
            atomic.write_file(tmp / MANIFEST_NAME, text + "\n")
    else:  # a folder shared with other files: each file atomically, the manifest last
        atomic.write_bytes(directory / INDEX_NAME, data, what="gallery index file")
        atomic.write_text(directory / MANIFEST_NAME, text + "\n", what="gallery index manifest")
    return directory


def load(directory) -> dict:
    """The parts of an index written by ``save``: ``{index, kind, binary, dim, params, labels, paths,
    ids, next_id, deleted_slots, model, edits}``.

    Raises:
        recog.errors.DataError (a RecogError): the directory, manifest or index file is
            missing, unreadable or inconsistent (counts, sizes, ids, kind, checksum).
    """
    directory = Path(directory)
    where = f"gallery index {directory}"
    manifest = read_manifest(directory)
    version = manifest["version"]
    kind, binary, dim, count = (manifest.get(key) for key in ("kind", "binary", "dim", "count"))
    params, labels, paths = manifest.get("params"), manifest.get("labels"), manifest.get("paths")
    if (
        kind not in KINDS
        or not isinstance(binary, bool)
        or not _is_int(dim)
        or dim < 1
        or not _is_int(count)
        or count < 0
        or not isinstance(params, dict)
        or set(params) - set(PARAM_NAMES[kind])
        or not all(_is_int(v) and v >= 1 for v in params.values())
        or not (labels is None or isinstance(labels, list))
        or not (paths is None or (isinstance(paths, list) and all(isinstance(p, str) for p in paths)))
    ):
        raise DataError(
            f"{where}: {MANIFEST_NAME} has missing or invalid fields (kind, binary, dim, count, params, labels, paths)"
        )
    if labels is not None and len(labels) != count:
        raise DataError(f"{where}: the manifest has {len(labels)} labels for {count} items")
    if paths is not None and len(paths) != count:
        raise DataError(f"{where}: the manifest has {len(paths)} paths for {count} items")
    ids, next_id, deleted, model, edits = _editable_fields(manifest, version, kind, count, where)
    data = _read_index_file(directory, manifest, version, where)
    try:
        index = (faiss.deserialize_index_binary if binary else faiss.deserialize_index)(np.frombuffer(data, np.uint8))
    except (RuntimeError, MemoryError) as error:
        first_line = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise DataError(
            f"{where}: cannot read {INDEX_NAME} as a faiss {'binary ' if binary else ''}index ({first_line})"
        ) from None
    if version == 1 and kind == "flat" and isinstance(index, FAISS_CLASSES[(kind, binary)]):
        index = with_id_map(index, binary)  # a flat index from before ids: ids 0..count-1
    if kind == "flat" and not isinstance(index, (faiss.IndexBinaryIDMap2, faiss.IndexIDMap2)):
        raise DataError(f"{where}: {INDEX_NAME} holds a {type(index).__name__}, not the id-mapped flat index expected")
    storage = inner_index(index)
    expected = FAISS_CLASSES[(kind, binary)]
    if not isinstance(storage, expected) or (not binary and storage.metric_type != faiss.METRIC_INNER_PRODUCT):
        raise DataError(
            f"{where}: {INDEX_NAME} holds a {type(storage).__name__} (metric "
            f"{getattr(storage, 'metric_type', '?')}), not the {kind!r} "
            f"{'Hamming' if binary else 'inner-product'} index the manifest describes"
        )
    if index.d != dim:
        raise DataError(f"{where}: {INDEX_NAME} has dimension {index.d}, the manifest {dim}")
    stored = count + len(deleted)
    if index.ntotal != stored:
        raise DataError(f"{where}: {INDEX_NAME} holds {index.ntotal} vectors, the manifest lists {stored} items")
    if kind != "hnsw" and not np.array_equal(stored_ids(index, kind), ids):
        raise DataError(f"{where}: the ids in {INDEX_NAME} differ from the manifest's")
    if labels is not None:
        labels = np.asarray(labels) if labels else np.zeros(0, np.int64)  # an emptied gallery
        if labels.ndim != 1 or labels.dtype.kind not in "iubU":
            raise DataError(f"{where}: the manifest's labels must all be integers or all strings")
    return {
        "index": index,
        "kind": kind,
        "binary": binary,
        "dim": dim,
        "params": params,
        "labels": labels,
        "paths": paths,
        "ids": ids,
        "next_id": next_id,
        "deleted_slots": deleted,
        "model": model,
        "edits": edits,
    }


def read_manifest(directory: Path) -> dict:
    """The parsed manifest of ``directory`` (format and version checked); ``DataError`` otherwise."""
    where = f"gallery index {directory}"
    if not directory.is_dir():
        raise DataError(f"{where}: no such directory (write one with GalleryIndex.save or stage=index)")
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise DataError(f"{where}: {MANIFEST_NAME} is missing; not a saved gallery index")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise DataError(f"{where}: {MANIFEST_NAME} is over {MAX_MANIFEST_BYTES} bytes; not a gallery index manifest")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise DataError(f"{where}: {MANIFEST_NAME} is unreadable or not JSON ({str(error)[:200]})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise DataError(f"{where}: {MANIFEST_NAME} is not a recog gallery index manifest")
    if manifest.get("version") not in READABLE_VERSIONS or isinstance(manifest.get("version"), bool):
        raise DataError(
            f"{where}: manifest format version {manifest.get('version')!r} is not "
            f"supported (this recog reads versions {', '.join(map(str, READABLE_VERSIONS))})"
        )
    return manifest


def _editable_fields(manifest: dict, version: int, kind: str, count: int, where: str) -> tuple:
    """``(ids, next_id, deleted_slots, model, edits)`` of a manifest, checked."""
    if version == 1:
        return np.arange(count, dtype=np.int64), count, np.zeros(0, np.int64), None, []
    ids, next_id, deleted = manifest.get("ids"), manifest.get("next_id"), manifest.get("deleted_slots")
    model, edits = manifest.get("model"), manifest.get("edits")
    if (
        not _int_list(ids)
        or not _is_int(next_id)
        or not _int_list(deleted)
        or not (model is None or (isinstance(model, str) and len(model) == 64))
        or not (isinstance(edits, list) and all(isinstance(e, dict) for e in edits))
    ):
        raise DataError(
            f"{where}: {MANIFEST_NAME} has missing or invalid fields (ids, next_id, deleted_slots, model, edits)"
        )
    ids, deleted = np.asarray(ids, dtype=np.int64), np.asarray(deleted, dtype=np.int64)
    if len(ids) != count:
        raise DataError(f"{where}: the manifest has {len(ids)} ids for {count} items")
    if len(ids) and (ids[0] < 0 or ids[-1] >= next_id or np.any(np.diff(ids) <= 0)):
        raise DataError(f"{where}: the manifest's ids must be ascending, unique, from 0 to below next_id={next_id}")
    if len(deleted) and (kind != "hnsw" or deleted[0] < 0 or np.any(np.diff(deleted) <= 0)):
        raise DataError(f"{where}: deleted_slots must be empty (flat, ivf) or ascending and unique (hnsw)")
    return ids, next_id, deleted, model, edits


def _read_index_file(directory: Path, manifest: dict, version: int, where: str) -> bytes:
    path = directory / INDEX_NAME
    if not path.is_file():
        raise DataError(f"{where}: the index file {INDEX_NAME} is missing")
    data = path.read_bytes()
    if version >= 2:
        size, digest = manifest.get("index_size"), manifest.get("index_sha256")
        if not _is_int(size) or not isinstance(digest, str):
            raise DataError(f"{where}: {MANIFEST_NAME} lacks index_size / index_sha256")
        if len(data) != size:
            raise DataError(f"{where}: {INDEX_NAME} has {len(data)} bytes, the manifest says {size} (truncated?)")
        if hashlib.sha256(data).hexdigest() != digest:
            raise DataError(f"{where}: {INDEX_NAME} was altered (its SHA-256 differs from the manifest's)")
    return data


def _int_list(value) -> bool:
    return isinstance(value, list) and all(_is_int(v) for v in value)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid in a manifest")
