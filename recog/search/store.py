"""The on-disk gallery index: ``index.faiss`` beside ``manifest.json``, written atomically, and
read back only after the manifest and the index file agree (anything else is a ``DataError``).

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
import os
from pathlib import Path

import faiss
import numpy as np

from recog.errors import DataError
from recog.search.faiss_backend import FAISS_CLASSES, KINDS, PARAM_NAMES
from recog.utils import atomic

FORMAT_VERSION = 1
FORMAT_NAME = "recog.gallery_index"
MANIFEST_NAME = "manifest.json"
INDEX_NAME = "index.faiss"


def manifest(*, kind: str, binary: bool, dim: int, count: int, params: dict, labels, paths) -> dict:
    """The ``manifest.json`` content of an index (``labels``: an array or None)."""
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "kind": kind,
        "binary": binary,
        "metric": "hamming" if binary else "inner_product",
        "dim": dim,
        "count": count,
        "params": dict(params),
        "index_file": INDEX_NAME,
        "labels": None if labels is None else labels.tolist(),
        "paths": None if paths is None else list(paths),
    }


def save(directory, index, binary: bool, manifest_content: dict) -> Path:
    """Write the faiss ``index`` and its manifest into ``directory`` (created if needed).

    A directory that holds nothing else is replaced whole (``recog.utils.atomic.replacing_dir``),
    so a failed or killed save leaves the previous index; disk full or permission denied raise
    ``recog.utils.atomic.StorageError``.
    """
    directory = Path(directory)
    try:
        text = json.dumps(manifest_content, indent=1, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"the labels or paths cannot be written as JSON: {error}") from None
    data = (faiss.serialize_index_binary if binary else faiss.serialize_index)(index)
    if not directory.is_dir() or set(os.listdir(directory)) <= {INDEX_NAME, MANIFEST_NAME}:
        with atomic.replacing_dir(directory, what="gallery index") as tmp:  # the pair, whole
            atomic.write_file(tmp / INDEX_NAME, data.tobytes())
            atomic.write_file(tmp / MANIFEST_NAME, text + "\n")
    else:  # a folder shared with other files: each file atomically, the manifest last
        atomic.write_bytes(directory / INDEX_NAME, data.tobytes(), what="gallery index file")
        atomic.write_text(directory / MANIFEST_NAME, text + "\n", what="gallery index manifest")
    return directory


def load(directory) -> dict:
    """The parts of an index written by ``save``: ``{index, kind, binary, dim, params, labels, paths}``.

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
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise DataError(f"{where}: {MANIFEST_NAME} is not a recog gallery index manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise DataError(
            f"{where}: manifest format version {manifest.get('version')!r} is not "
            f"supported (this recog reads version {FORMAT_VERSION})"
        )
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
    index_path = directory / INDEX_NAME
    if not index_path.is_file():
        raise DataError(f"{where}: the index file {INDEX_NAME} is missing")
    try:
        index = (faiss.read_index_binary if binary else faiss.read_index)(str(index_path))
    except (RuntimeError, MemoryError) as error:
        first_line = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise DataError(
            f"{where}: cannot read {INDEX_NAME} as a faiss {'binary ' if binary else ''}index ({first_line})"
        ) from None
    expected = FAISS_CLASSES[(kind, binary)]
    if not isinstance(index, expected) or (not binary and index.metric_type != faiss.METRIC_INNER_PRODUCT):
        raise DataError(
            f"{where}: {INDEX_NAME} holds a {type(index).__name__} (metric "
            f"{getattr(index, 'metric_type', '?')}), not the {kind!r} "
            f"{'Hamming' if binary else 'inner-product'} index the manifest describes"
        )
    if index.d != dim:
        raise DataError(f"{where}: {INDEX_NAME} has dimension {index.d}, the manifest {dim}")
    if index.ntotal != count:
        raise DataError(f"{where}: {INDEX_NAME} holds {index.ntotal} vectors, the manifest lists {count} items")
    if labels is not None:
        labels = np.asarray(labels)
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
    }


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
