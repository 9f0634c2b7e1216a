"""Index stage: a saved gallery index built, edited or re-embedded with an export, and logged with
that export as one MLflow Model that answers "which gallery object is this?" (a search model).

    python run.py stage=index index.model_dir=<export> index.gallery=<list|folder> [index.dir=<dir>]
    python run.py stage=index index.model_dir=<export> index.add=<list|folder>
    python run.py stage=index index.model_dir=<export> index.remove=[12,40]

The gallery is a list of ``path label`` lines (paths relative to the list's folder) or a folder of
``<label>/`` subfolders (the folder name is the label); every image needs a label. The index lives
in ``index.dir`` (default ``<model_dir>/../index``, beside the export); an existing one is loaded,
and then:

1. if another export embedded it (its manifest records ``model_digest``), every stored image is
   embedded again with this export (images that no longer decode are dropped, with a warning);
2. ``index.gallery``: its images not indexed yet are added;
3. ``index.add``: all its images are added (an image already indexed is an error naming its id);
4. ``index.remove``: the entries with these ids are removed;

each step recorded in the index's edit history, the index saved atomically (one ``stage=index`` at
a time edits a folder's indexes: a second one is refused while the first runs). The stage's run folder
receives ``search_model/`` (copies of the export and the index, ``search.json`` with
``predict.top_k`` and the threshold: ``predict.threshold``, else the export's ``threshold.json``;
``recog.search.searcher``) and ``index_summary.json``; ``search_model/`` is logged as the MLflow
Model of this stage's run (``index.log_model=false`` skips it). Serve it with
``make serve MODEL=runs:/<run id>/model``.
"""

import contextlib
import fcntl
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from recog.errors import ConfigError, DataError
from recog.search import GalleryIndex, model_digest
from recog.search.searcher import choose_threshold, write_search_folder
from recog.stages.predict import IMAGE_SUFFIXES, Item, extract, read_items
from recog.tracking import MlflowTracker
from recog.utils import atomic

log = logging.getLogger(__name__)

SEARCH_MODEL_DIR = "search_model"


def check_ready(cfg: DictConfig) -> None:
    """``ConfigError`` unless the export exists and there is an index to build, edit or log
    (also checked by ``run.py`` before Hydra creates a run folder)."""
    c = cfg.index
    if not c.model_dir:
        raise ConfigError("stage=index needs an export: index.model_dir=<dir> (make one with stage=export)")
    if not Path(c.model_dir).is_dir():
        raise ConfigError(f"index.model_dir={c.model_dir} is not a folder: point it at an export (stage=export)")
    for key in ("gallery", "add"):
        if c[key] and not Path(c[key]).exists():
            raise ConfigError(f"index.{key}={c[key]} is neither a folder nor a list file")
    if not 0 < c.rebuild_fraction <= 1:
        raise ConfigError(f"index.rebuild_fraction must be in (0, 1], got {c.rebuild_fraction}")
    if not c.gallery and not (index_dir(cfg) / "manifest.json").is_file():
        raise ConfigError(
            f"no gallery index in {index_dir(cfg)}: build one with index.gallery=<list of `path label` lines, "
            "or a folder of <label>/ subfolders>"
        )


def index_dir(cfg: DictConfig) -> Path:
    return Path(cfg.index.dir) if cfg.index.dir else Path(cfg.index.model_dir).resolve().parent / "index"


def run(cfg: DictConfig, run_dir) -> dict:
    from recog.inference import ExportedModel

    check_ready(cfg)
    c, run_dir = cfg.index, Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    folder = index_dir(cfg)
    model = ExportedModel(c.model_dir, device=cfg.trainer.device)
    digest = model_digest(c.model_dir)
    summary: dict = {"index": str(folder.resolve()), "model_dir": str(Path(c.model_dir).resolve())}
    tracker = MlflowTracker(cfg, stage="index", train_run_id=_train_run_id(model))
    try:
        with editing(folder):
            index = _updated_index(cfg, model, digest, folder, run_dir, summary)
            index.save(folder)
        summary.update(size=index.ntotal, ids=_id_range(index), next_id=index.next_id, kind=index.kind)
        threshold = choose_threshold(c.model_dir, cfg.predict.threshold, index.binary)
        summary["threshold"] = threshold
        search_dir = run_dir / SEARCH_MODEL_DIR
        shutil.rmtree(search_dir, ignore_errors=True)
        write_search_folder(search_dir, c.model_dir, folder, cfg.predict.top_k, threshold)
        if c.log_model:
            tracker.log_model(search_dir)
            tracker.log_metrics({"gallery_size": index.ntotal}, step=0)
            if tracker.active and tracker.run_id:
                summary["mlflow_model"] = f"runs:/{tracker.run_id}/model"
        atomic.write_text(run_dir / "index_summary.json", json.dumps(summary, indent=2) + "\n", "index summary")
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish()
    log.info(
        "gallery index %s: %d entries (ids %s), threshold %s; %s%s",
        folder,
        index.ntotal,
        summary["ids"],
        "none (every query gets its best match's label)" if threshold is None else f"{threshold['score']:g}",
        tracker.describe(),
        f"; serve it: make serve MODEL={summary['mlflow_model']}" if "mlflow_model" in summary else "",
    )
    return summary


def _updated_index(cfg: DictConfig, model, digest, folder: Path, run_dir: Path, summary: dict) -> GalleryIndex:
    """The index of ``folder`` (or a new one) after steps 1-4 of the module docstring."""
    c = cfg.index
    binary = bool(model.binarize)
    index = GalleryIndex.load(folder) if (folder / "manifest.json").is_file() else None
    if index is not None:
        index.rebuild_fraction = float(c.rebuild_fraction)
        if index.model != digest or index.binary != binary:
            index = _reembed(cfg, model, digest, index, run_dir, summary)
    if c.gallery:
        items = labelled_items(c.gallery, "index.gallery")
        known = set(index.paths or []) if index is not None else set()
        new = [item for item in items if item.path not in known]
        log.info("index.gallery=%s: %d images, %d not indexed yet", c.gallery, len(items), len(new))
        if new:
            index = _add(cfg, model, digest, index, new, c.gallery, run_dir)
        summary["added_from_gallery"] = len(new)
    if c.add:
        items = labelled_items(c.add, "index.add")
        where = dict(zip(index.paths or [], index.ids.tolist())) if index is not None else {}
        indexed = [f"{item.path} (id {where[item.path]})" for item in items if item.path in where]
        if indexed:
            raise DataError(
                f"index.add={c.add}: {len(indexed)} image(s) are indexed already, e.g. {indexed[0]}: "
                "remove them first (index.remove=[ids]) to index them again, or leave them out"
            )
        index = _add(cfg, model, digest, index, items, c.add, run_dir)
        summary["added"] = len(items)
    if c.remove:
        if index is None:
            raise ConfigError(f"index.remove: there is no index in {folder} to remove entries from")
        try:
            summary["removed"] = index.remove(list(c.remove))
        except ValueError as error:
            raise DataError(f"index.remove={list(c.remove)}: {error}") from None
    return index


@contextlib.contextmanager
def editing(folder: Path):
    """One ``stage=index`` at a time per index folder: an exclusive lock (``flock``) on its parent
    folder while the index is read, edited and saved (released when the process ends, however)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(folder.parent, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"another stage=index is editing a gallery index in {folder.parent}: wait until it ends"
            ) from None
        yield
    finally:
        os.close(handle)  # closing releases the lock


def labelled_items(spec: str, what: str) -> list[Item]:
    """Images of a list (every line ``path label``) or of a folder of ``<label>/`` subfolders, as
    absolute paths; ``DataError`` for an image without a label."""
    path = Path(spec)
    if path.is_dir():
        images = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        loose = [p for p in images if p.parent == path]
        if loose:
            raise DataError(
                f"{what}={spec}: {len(loose)} image(s) directly in the folder, e.g. {loose[0].name}: put each "
                "object's images in a subfolder named by its label (<folder>/<label>/<image>), or give a list"
            )
        items = [Item(str(p.resolve()), p.relative_to(path).parts[0]) for p in images]
        if not items:
            raise DataError(f"{what}={spec} holds no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        return items
    items = [Item(str(Path(i.path).resolve()), i.label) for i in read_items(spec, what)]
    unlabelled = [i for i in items if i.label is None]
    if unlabelled:
        raise DataError(
            f"{what}={spec}: {len(unlabelled)} of {len(items)} images have no label, e.g. {unlabelled[0].path}: "
            "a search index answers with labels; write `path label` lines"
        )
    return items


def _add(cfg, model, digest, index, items: list[Item], source: str, run_dir: Path) -> GalleryIndex:
    rows, kept, failed = extract(model, items, run_dir / "gallery_features.npy", cfg.predict.batch_size, "gallery")
    _report_failed(failed, run_dir)
    if not kept:
        raise DataError(f"none of the images of {source} could be decoded (see {run_dir / 'gallery_failed.txt'})")
    labels, paths = [i.label for i in kept], [i.path for i in kept]
    vectors = np.asarray(rows)
    if index is None:
        return GalleryIndex.build(
            vectors, labels, paths, kind=cfg.index.kind.value, binary=bool(model.binarize), model=digest, source=source
        )
    try:
        return index.add(vectors, labels, paths, source=source)
    except ValueError as error:  # string labels (a folder) and integer ones (a list) mixed
        raise DataError(f"cannot add {source} to the index: {error}") from None


def _reembed(cfg, model, digest, index: GalleryIndex, run_dir: Path, summary: dict) -> GalleryIndex:
    """Every stored image embedded again with ``model`` (the index was built with another export)."""
    if index.paths is None:
        raise DataError(
            "the gallery index was built with another model and stores no image paths: it cannot be "
            "re-embedded; build a new one (index.dir=<new dir> index.gallery=...)"
        )
    log.warning(
        "the gallery index was built with %s: embedding its %d images again with %s",
        f"another export ({index.model[:12]}...)" if index.model else "an unknown export",
        index.ntotal,
        cfg.index.model_dir,
    )
    ids = index.ids
    items = [Item(path, None) for path in index.paths]
    rows, kept, failed = extract(model, items, run_dir / "gallery_features.npy", cfg.predict.batch_size, "re-embed")
    _report_failed(failed, run_dir)
    position = {path: place for place, path in enumerate(index.paths)}
    keep_ids = np.asarray([ids[position[item.path]] for item in kept], dtype=np.int64)
    if failed:
        log.warning("%d gallery image(s) could not be read again and leave the index", len(failed))
    summary["reembedded"] = len(kept)
    return index.reembedded(np.asarray(rows), keep_ids, digest, binary=bool(model.binarize))


def _report_failed(failed: list[str], run_dir: Path) -> None:
    atomic.write_text(run_dir / "gallery_failed.txt", "".join(line + "\n" for line in failed))
    for line in failed[:5]:
        log.warning("skipped %s", line)


def _id_range(index: GalleryIndex) -> str:
    ids = index.ids
    return "none" if not len(ids) else f"{ids[0]}..{ids[-1]}"


def _train_run_id(model) -> str | None:
    """The training run of the export (its report's ``train_run_id`` / ``mlflow_run_id``)."""
    from recog.inference.predictor import REPORT_FILE

    try:
        report = json.loads((Path(model.model_dir) / REPORT_FILE).read_text())
    except (OSError, ValueError):
        return None
    value = (report.get("train_run_id") or report.get("mlflow_run_id")) if isinstance(report, dict) else None
    return value if isinstance(value, str) else None
