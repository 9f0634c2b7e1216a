"""What ties a gallery index to the model that embedded it, and its entries' ids.

An index records the SHA-256 of the ``manifest.json`` of the export whose features it holds
(``model_digest``: the manifest lists the SHA-256 of every file of the export, so its digest
names the model, its preprocessing and its output). Features of another export live in another
space: ``check_model`` refuses them with a ``ModelMismatchError`` that says how to re-index.

Ids: every entry has an int64 id, ascending in the order entries were added and never reused;
an entry's *index* is its place among the live entries (``places``).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from recog.errors import DataError

log = logging.getLogger(__name__)


class ModelMismatchError(DataError):
    """Features of one export searched in an index built from another export's features."""


def model_digest(export_dir) -> str | None:
    """The SHA-256 of an export's ``manifest.json`` (which lists the SHA-256 of every file of the
    export): what an index records as the model that embedded its gallery. None for an export
    without a manifest (written before manifests existed)."""
    path = Path(export_dir) / "manifest.json"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def check_model(index_model: str | None, digest: str | None, index_dir=None, export_dir=None) -> None:
    """``ModelMismatchError`` when an index embedded by the export ``index_model`` meets features of
    the export ``digest`` (both ``model_digest`` values); a warning when either is unknown."""
    where = f"the gallery index {index_dir}" if index_dir else "the gallery index"
    if index_model is None or digest is None:
        log.warning(
            "%s records no model (or the export has no manifest): cannot check that its features come from %s",
            where,
            export_dir or "this export",
        )
        return
    if digest != index_model:
        how = (
            f"python run.py stage=index index.dir={index_dir} index.model_dir={export_dir}"
            if index_dir and export_dir
            else "python run.py stage=index index.dir=<index> index.model_dir=<export>"
        )
        raise ModelMismatchError(
            f"{where} was built with another model (export manifest SHA-256 {index_model[:12]}...) than "
            f"{export_dir or 'this export'} ({digest[:12]}...): their features are not comparable. "
            f"Re-index the gallery with this model (stage=index re-embeds its stored images): {how}"
        )


def places(ids: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Entry ids -> their indices (places in ``ids``, ascending); -1 stays -1."""
    found = np.searchsorted(ids, labels)
    return np.where(labels >= 0, found, -1).astype(np.int64)


def id_array(ids) -> np.ndarray:
    """Unique int64 ids, ascending, from an iterable of integers; ``ValueError`` for anything else."""
    values = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids)
    if values.size and (values.dtype.kind not in "iu" or values.ndim != 1):
        raise ValueError(f"gallery entry ids must be integers, got {values.dtype} {values.shape}")
    return np.unique(values.astype(np.int64))


def check_ids(ids, count: int) -> np.ndarray:
    """``count`` ascending, unique, non-negative int64 ids; ``ValueError`` otherwise."""
    values = np.asarray(ids)
    if values.shape != (count,) or (count and values.dtype.kind not in "iu"):
        raise ValueError(f"ids must be {count} integers, got {values.dtype} {values.shape}")
    values = values.astype(np.int64)
    if count and (values[0] < 0 or np.any(np.diff(values) <= 0)):
        raise ValueError("ids must be ascending, unique and non-negative")
    return values
