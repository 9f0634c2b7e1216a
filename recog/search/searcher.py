"""A search model: an export and a gallery index that answer "which gallery object is this?".

A search folder (what ``stage=index`` logs as an MLflow Model, and what ``GallerySearcher`` loads)::

    export/        the recog export (its manifest.json checked on load)
    index/         the gallery index (recog.search.store), built with that export's features
    search.json    {"format": "recog-search", "format_version": 1, "top_k": 5,
                    "threshold": {"score": 0.62, "similarity": "inner_product", "source": "...",
                                  "target_fmr": 0.001, "fnmr": 0.12} | null}

``answer`` returns, per query, its ``top_k`` gallery matches and a decision::

    {"decision": 7 | "unknown", "score": 0.91, "threshold": 0.62,
     "matches": [{"id": 12, "path": "gallery/7/a.png", "label": 7, "score": 0.91}, ...]}

``decision`` is the best match's label when the best score passes the threshold (inner product
``>=`` it; Hamming distance ``<=`` it, for binary codes), else ``"unknown"``. The threshold is
``predict.threshold`` when set, else the export's calibrated ``threshold.json``
(``recog.inference.threshold``). With neither, every query gets its best match's label,
``threshold`` is null and ``note`` says that no threshold was set. An empty gallery answers
``"unknown"`` with no matches.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np

from recog.errors import ConfigError, DataError
from recog.search.binding import model_digest
from recog.search.index import GalleryIndex

log = logging.getLogger(__name__)

FORMAT, FORMAT_VERSION = "recog-search", 1
SEARCH_FILE, EXPORT_DIR, INDEX_DIR = "search.json", "export", "index"
UNKNOWN = "unknown"
MAX_TOP_K = 1000
NO_THRESHOLD = (
    "no threshold set (no predict.threshold, no threshold.json in the export): the decision is the best match's label"
)


def choose_threshold(export_dir, override: float | None, binary: bool) -> dict | None:
    """The threshold a search model decides with: ``override`` (``predict.threshold``) when given,
    else the export's ``threshold.json``, else None. ``ConfigError`` for one of the wrong kind."""
    from recog.inference import threshold as thresholds

    similarity = "hamming" if binary else "inner_product"
    if override is not None:
        if not isinstance(override, (int, float)) or isinstance(override, bool) or not math.isfinite(override):
            raise ConfigError(f"predict.threshold must be a finite number, got {override!r}")
        return {"score": float(override), "similarity": similarity, "source": "predict.threshold"}
    saved = thresholds.load(export_dir)
    if saved is None:
        return None
    if saved.similarity != similarity:
        raise ConfigError(
            f"{Path(export_dir) / thresholds.FILE_NAME} is a {saved.similarity} threshold, but the export "
            f"outputs {'binary codes (Hamming distances)' if binary else 'real features (inner products)'}"
        )
    return {**saved.to_dict(), "source": f"{thresholds.FILE_NAME} of the export"}


def write_search_folder(destination, export_dir, index_dir, top_k: int, threshold: dict | None) -> Path:
    """Copy the export and the index into ``destination`` (created) with their ``search.json``."""
    destination = Path(destination)
    destination.mkdir(parents=True)
    shutil.copytree(export_dir, destination / EXPORT_DIR)
    shutil.copytree(index_dir, destination / INDEX_DIR)
    settings = {"format": FORMAT, "format_version": FORMAT_VERSION, "top_k": check_top_k(top_k), "threshold": threshold}
    (destination / SEARCH_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    return destination


class GallerySearcher:
    """A search folder (module docstring) loaded: ``answer(images)`` per query image."""

    def __init__(self, folder, device: str = "auto", warn: bool = True):
        from recog.inference import ExportedModel

        folder = Path(folder)
        self.settings = _read_settings(folder / SEARCH_FILE)
        self.model = ExportedModel(folder / EXPORT_DIR, device=device)  # verifies the export's manifest
        self.index = GalleryIndex.load(folder / INDEX_DIR)
        self.index.check_model(model_digest(folder / EXPORT_DIR), folder / INDEX_DIR, folder / EXPORT_DIR)
        if self.index.labels is None:
            raise DataError(f"the gallery index in {folder} has no labels: a search model answers with labels")
        if bool(self.model.binarize) != self.index.binary:
            raise DataError(f"the export and the gallery index in {folder} disagree on binary codes")
        self.threshold = self.settings["threshold"]
        if self.threshold is None and warn:
            log.warning("search model %s: %s", folder, NO_THRESHOLD)

    @property
    def top_k(self) -> int:
        return self.settings["top_k"]

    def features(self, images: list[np.ndarray]) -> np.ndarray:
        """Features (or bit-packed codes) of ``[H, W, 3] uint8`` RGB images, as the index holds them."""
        from recog.metrics import pack_bits

        features = self.model.predict_images(images)
        return pack_bits(features) if self.index.binary else features

    def answer(self, images: list[np.ndarray], top_k: int | None = None) -> list[dict]:
        """One answer per image (module docstring)."""
        k = check_top_k(self.top_k if top_k is None else top_k)
        queries = self.features(images)
        if not self.index.ntotal:
            return [self._answer([], None) for _ in images]
        scores, places = self.index.search(queries, k)
        ids, labels, paths = self.index.ids, self.index.labels, self.index.paths
        answers = []
        for row_scores, row_places in zip(scores.tolist(), places.tolist()):
            matches = [
                {
                    "id": int(ids[place]),
                    "path": None if paths is None else paths[place],
                    "label": labels[place].item(),
                    "score": score if self.index.binary else float(score),
                }
                for score, place in zip(row_scores, row_places)
                if place >= 0
            ]
            answers.append(self._answer(matches, matches[0]["score"] if matches else None))
        return answers

    def _answer(self, matches: list[dict], best: float | None) -> dict:
        threshold = self.threshold
        if not matches:
            decision = UNKNOWN
        elif threshold is None or _accepts(threshold, best):
            decision = matches[0]["label"]
        else:
            decision = UNKNOWN
        out = {"decision": decision, "score": best, "threshold": None if threshold is None else threshold["score"]}
        if threshold is None:
            out["note"] = NO_THRESHOLD
        out["matches"] = matches
        return out


def _accepts(threshold: dict, score) -> bool:
    return score >= threshold["score"] if threshold["similarity"] == "inner_product" else score <= threshold["score"]


def check_top_k(value) -> int:
    """``value`` as a number of matches per query (1 to ``MAX_TOP_K``); ``ConfigError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= int(value) <= MAX_TOP_K:
        raise ConfigError(f"top_k must be an integer from 1 to {MAX_TOP_K}, got {value!r}")
    return int(value)


def _read_settings(path: Path) -> dict:
    """The checked ``search.json``; ``DataError`` naming what is wrong."""
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DataError(f"{path} is missing or not JSON ({error}): not a recog search model") from None
    if not isinstance(settings, dict) or settings.get("format") != FORMAT:
        raise DataError(f"{path} is not a recog search model's settings")
    if settings.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path}: format version {settings.get('format_version')!r} is not {FORMAT_VERSION}")
    try:
        settings["top_k"] = check_top_k(settings.get("top_k"))
    except ConfigError as error:
        raise DataError(f"{path}: {error}") from None
    threshold = settings.get("threshold")
    if threshold is not None and not (
        isinstance(threshold, dict)
        and isinstance(threshold.get("score"), (int, float))
        and not isinstance(threshold.get("score"), bool)
        and math.isfinite(threshold["score"])
        and threshold.get("similarity") in ("inner_product", "hamming")
    ):
        raise DataError(f"{path}: threshold must be null or an object with a finite score and a similarity")
    return settings
