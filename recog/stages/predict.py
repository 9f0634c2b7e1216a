"""Predict stage: images -> features with an exported model, and optionally a gallery search.

(Over 300 lines: reading the inputs, extending a gallery and post-processing its search are one stage.)

``python run.py stage=predict predict.model_dir=<export> predict.input=DIR|LIST
[predict.gallery=DIR|LIST]`` writes into the run directory (or ``predict.output_dir``)::

    features.npy      [N, D] float32 features of the images that decoded, in manifest order
                      (codes.npy instead, [N, ceil(D/8)] uint8 bit-packed, for a binarizing export)
    manifest.tsv      path <tab> label (empty when unknown), one line per row of features.npy
    failed.txt        images that could not be decoded (skipped, not fatal)
    gallery/          the faiss index and its manifest (predict.gallery); reused and extended
    results.json      top-k gallery results per query (predict.gallery)
    metrics.json      Recall@K, mAP, ... when every query and every gallery image has a label
                      (labels are optional per line: other queries get results, and no metrics)
    retrieval.png     the first queries and their top-k results, right ones framed green (a
                      picture that cannot be written is a warning, not the end of the run)

The search ranks the gallery once, exactly, over the vectors the index stores (whatever
``predict.index``'s kind: that is the kind of the saved index), with ``recog.metrics.rank``:
results.json, metrics.json and retrieval.png read the same ``RetrievalResults``.

Post-processing, the same ``postprocess`` group as ``stage=eval``: ``postprocess=flip`` averages the
features of each image (input and gallery) and of its mirror; ``query_expansion`` expands each
query with its top K gallery items before the ranking; ``k_reciprocal`` re-orders each query's top
``max(predict.top_k, top_k)`` places by the k-reciprocal distance (its ``rerank_distance`` in
results.json, ascending; ``score`` stays the inner product). features.npy holds the
(flip-averaged) features, not the expanded queries. A reused gallery index keeps the features it
was built with: index a gallery again (another ``predict.index_dir``) after changing the flip.

Extraction streams: memory is bounded by the batch, not by the number of images. Every file
(and the gallery index, a directory) is written to a temp name and renamed into place
(``recog.utils.atomic``): a failed or killed run leaves complete earlier outputs, and disk full /
permission denied end in ``StorageError`` (exit code 2) naming the file.
"""

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from recog.data.lists import EntryChecker, format_bad_lines, parse_label, read_lines, short
from recog.data.transforms import decode_image
from recog.errors import ConfigError, DataError
from recog.evaluation.results import write_metrics
from recog.inference import ExportedModel, preprocess_image
from recog.metrics import RetrievalResults, format_metrics_table, pack_bits, rank, unpack_bits
from recog.postprocess import Pipeline, build_postprocess
from recog.search import GalleryIndex, model_digest, save_retrieval_grid
from recog.tracking import MlflowTracker
from recog.utils import atomic
from recog.utils.paths import check_writable
from recog.utils.runtime import is_main_process

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Item:
    path: str
    label: int | None = None


PREDICT_LIST_FORMAT = "'path' or 'path label' per line, paths relative to the list's folder, label an integer >= 0"


def read_items(spec: str, what: str) -> list[Item]:
    """Images of a folder (recursively, sorted; labels unknown) or of a list file whose lines are
    ``path [label]``, paths relative to the list's folder.

    A list is read as the training lists are (``recog.data.lists``): a UTF-8 byte-order mark is
    ignored, undecodable lines are named, blank lines and ``#`` comments are skipped, and paths
    outside the list's folder (``../``, absolute), paths listed twice and malformed lines are
    reported together, with line numbers. A listed image that does not exist is skipped like
    one that does not decode (failed.txt), unless none of them exists.
    """
    path = Path(spec)
    if path.is_dir():
        items = [Item(str(p)) for p in sorted(path.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
    elif path.is_file():
        items = _read_list(path, what)
    else:
        raise ConfigError(f"{what}={spec} is neither a folder nor a list file")
    if not items:
        raise DataError(f"{what}={spec} holds no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return items


def _read_list(path: Path, what: str) -> list[Item]:
    items, checker = [], EntryChecker(str(path.parent))
    for number, line in enumerate(read_lines(str(path), f"{what} list"), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) > 2:
            checker.problems.append((number, f"{len(fields)} fields in {short(line.strip())}"))
            continue
        label, problem = parse_label(fields[1]) if len(fields) == 2 else (None, None)
        if problem:
            checker.problems.append((number, problem))
            continue
        image = checker.path(number, fields[0])
        if image is not None:
            items.append(Item(image, label))
    problems = sorted(checker.problems)
    if items and len(checker.missing) == len(items):
        problems.insert(
            0,
            (
                None,
                f"none of the {len(items)} listed images exist, e.g. {short(items[0].path, 200)}: "
                "paths are relative to the list's folder",
            ),
        )
    if problems:
        raise DataError(format_bad_lines(str(path), problems, PREDICT_LIST_FORMAT))
    return items


def check_ready(cfg: DictConfig) -> None:
    """``ConfigError`` unless ``predict.model_dir`` and ``predict.input`` are given and exist
    (also checked by ``run.py`` before Hydra creates a run folder)."""
    p = cfg.predict
    if not p.model_dir:
        raise ConfigError("stage=predict needs an export: predict.model_dir=<dir> (make one with stage=export)")
    if not p.input:
        raise ConfigError("stage=predict needs images: predict.input=<folder or list file>")
    if not Path(p.model_dir).is_dir():
        raise ConfigError(f"predict.model_dir={p.model_dir} is not a folder: point it at an export (stage=export)")
    for key in ("input", "gallery"):
        if p[key] and not Path(p[key]).exists():
            raise ConfigError(f"predict.{key}={p[key]} is neither a folder nor a list file")
    if p.output_dir:
        check_writable(str(p.output_dir), "predict.output_dir", "choose a writable predict.output_dir")


def extract(
    model: ExportedModel, items: list[Item], out_file: Path, batch_size: int, desc: str, post: Pipeline | None = None
) -> tuple[np.ndarray, list[Item], list[str]]:
    """Features (or packed codes) of ``items`` streamed into ``out_file`` (.npy), through the
    post-processing's ``features_of`` (``postprocess=flip``: the mean of each image's and its mirror's).

    Returns ``(rows, kept items, failed lines)``; ``rows`` is the file memory-mapped read-only.
    """
    method = model.preprocess.get("binarize")
    width = model.feature_dim if not method else -(-model.feature_dim // 8)
    dtype = np.float32 if not method else np.uint8
    tmp = out_file.with_name(out_file.name + ".partial.npy")
    rows = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(len(items), width))
    try:
        atomic.preallocate(tmp)  # disk full: a clear error now, not SIGBUS while filling the memmap
        rows, kept, failed, count = _extract_into(rows, model, items, batch_size, desc, method, post or Pipeline())
        rows.flush()
        del rows
        # Drop the rows of skipped images: streamed in chunks (np.save), so memory stays bounded.
        full = np.load(tmp, mmap_mode="r")
        with atomic.open_file(out_file, what="features file") as writer:
            np.save(writer, full[:count])
        del full
    finally:
        tmp.unlink(missing_ok=True)
    return np.load(out_file, mmap_mode="r"), kept, failed


def _extract_into(
    rows: np.ndarray, model: ExportedModel, items: list[Item], batch_size: int, desc: str, method, post: Pipeline
) -> tuple[np.ndarray, list[Item], list[str], int]:
    """Decode, preprocess and predict ``items`` batch by batch into ``rows`` (skipped images leave
    no row); returns ``(rows, kept items, failed lines, rows filled)``."""
    kept, failed, count = [], [], 0

    def load(item):
        try:
            return preprocess_image(decode_image(item.path), model.preprocess), None
        except DataError as error:
            return None, str(error)

    with (
        ThreadPoolExecutor(max_workers=4) as pool,
        tqdm(total=len(items), desc=desc, disable=not is_main_process(), dynamic_ncols=True) as bar,
    ):
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            images = []
            for item, (image, error) in zip(batch, pool.map(load, batch)):
                if image is None:
                    log.warning("skipped %s", error)
                    failed.append(f"{item.path}\t{error}")
                else:
                    images.append(image)
                    kept.append(item)
            if images:
                # 0/1 bits for a binarizing export (never flip-averaged: check_postprocess)
                features = post.features_of(model.predict, np.stack(images), bool(model.preprocess.get("normalize")))
                if method:
                    features = pack_bits(features)
                rows[count : count + len(images)] = features
                count += len(images)
            bar.update(len(batch))
    return rows, kept, failed, count


def write_manifest(items: list[Item], path: Path) -> None:
    atomic.write_text(path, "".join(f"{i.path}\t{'' if i.label is None else i.label}\n" for i in items), "manifest")


def check_postprocess(model: ExportedModel, post: Pipeline) -> None:
    """``ConfigError`` when a post-processing step that needs real features meets a binarizing export."""
    if model.preprocess.get("binarize") and post.real_only:
        raise ConfigError(
            f"postprocess ({post.describe()}) works on real features; "
            "the export in predict.model_dir outputs binary codes"
        )


def search(index: GalleryIndex, queries: np.ndarray, post: Pipeline, k: int, paths, labels) -> RetrievalResults:
    """The gallery ranked once for ``queries`` (exactly, over the vectors the index stores, whatever
    its kind), between the post-processing's ``expand`` and ``rerank``: the top ``k`` places of each
    query, and with ``labels`` (and a labelled gallery) the positives' ranks, for the metrics."""
    gallery = index.gallery_vectors()
    found = {"query_paths": paths, "gallery_paths": index.paths}
    if index.binary:  # Hamming ranking of the unpacked bits (post-processing was refused)
        codes = unpack_bits(np.asarray(queries), index.dim)
        return rank(codes, labels, unpack_bits(gallery, index.dim), index.labels, k=k, binary=True, **found)
    return post.rank(np.asarray(queries, np.float32), labels, gallery, index.labels, k=k, **found)


def gallery_index(
    model: ExportedModel, cfg: DictConfig, index_dir: Path, out_dir: Path, post: Pipeline | None = None
) -> GalleryIndex:
    """Load the index in ``index_dir`` and add the gallery images it lacks, or build it anew."""
    p = cfg.predict
    items = read_items(p.gallery, "predict.gallery")
    binary = bool(model.preprocess.get("binarize"))
    index = GalleryIndex.load(index_dir) if (index_dir / "manifest.json").is_file() else None
    digest = model_digest(p.model_dir)
    if index is not None:
        index.check_model(digest, index_dir, p.model_dir)  # another export's features: re-index (stage=index)
        known = set(index.paths or [])
        new = [i for i in items if i.path not in known]
        log.info("gallery %s: %d images indexed, %d new", index_dir, len(known), len(new))
    else:
        new = items
    if new:
        rows, kept, failed = extract(model, new, out_dir / "gallery_features.npy", p.batch_size, "gallery", post)
        atomic.write_text(out_dir / "gallery_failed.txt", "".join(line + "\n" for line in failed))
        labels = [i.label for i in kept]
        unlabelled = sum(label is None for label in labels)
        if 0 < unlabelled < len(labels):
            log.warning(
                "%d of %d gallery images have no label: the gallery is indexed without labels "
                "(results without gallery labels, no metrics)",
                unlabelled,
                len(labels),
            )
        labels = labels if not unlabelled else None
        paths = [i.path for i in kept]
        if index is None:
            index = GalleryIndex.build(
                np.asarray(rows),
                labels=labels,
                paths=paths,
                kind=p.index,
                binary=binary,
                model=digest,
                source=p.gallery,
            )
        else:
            if (labels is None) != (index.labels is None):
                raise DataError(
                    f"the gallery index {index_dir} {'has' if index.labels is not None else 'has no'} "
                    f"labels, the new images of predict.gallery={p.gallery} "
                    f"{'do not all have one' if labels is None else 'have labels'}: label every line "
                    "the same way, or build a new index (predict.index_dir=<new dir>)"
                )
            if labels is not None and index.labels.dtype.kind not in "iu":
                raise DataError(
                    f"the gallery index {index_dir} has string labels, predict.gallery={p.gallery} "
                    "integer ones: build a new index (predict.index_dir=<new dir>)"
                )
            index.add(np.asarray(rows), labels=labels, paths=paths, source=p.gallery)
        index.save(index_dir)
    return index


def run(cfg: DictConfig, run_dir) -> dict:
    p = cfg.predict
    check_ready(cfg)
    out_dir = Path(p.output_dir or run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = ExportedModel(p.model_dir, device=cfg.trainer.device)
    items = read_items(p.input, "predict.input")
    post = build_postprocess(cfg.postprocess)
    check_postprocess(model, post)
    tracker = MlflowTracker(cfg, stage="predict")
    try:
        name = "codes.npy" if model.preprocess.get("binarize") else "features.npy"
        rows, kept, failed = extract(model, items, out_dir / name, p.batch_size, "predict", post)
        write_manifest(kept, out_dir / "manifest.tsv")
        atomic.write_text(out_dir / "failed.txt", "".join(line + "\n" for line in failed))
        summary = {"images": len(items), "extracted": len(kept), "failed": len(failed)}
        if failed:
            log.warning(
                "%d image(s) could not be decoded and were skipped: see %s", len(failed), out_dir / "failed.txt"
            )
        if p.gallery:
            index_dir = Path(p.index_dir) if p.index_dir else out_dir / "gallery"
            index = gallery_index(model, cfg, index_dir, out_dir, post)
            paths, labels = [i.path for i in kept], [i.label for i in kept]
            # Unlabelled queries get results, and no metrics: metrics need a label on every query and gallery image.
            labelled = all(label is not None for label in labels)
            found = search(index, np.asarray(rows), post, p.top_k, paths, labels if labelled else None)
            results = found.to_dicts()
            for row, label in zip(results, labels):
                row["label"] = label
            atomic.write_text(out_dir / "results.json", json.dumps(results, indent=1), "search results")
            if not labelled and any(label is not None for label in labels):
                log.warning(
                    "%d of %d queries have no label: no metrics (they need a label on every query)",
                    sum(label is None for label in labels),
                    len(labels),
                )
            elif labelled and index.labels is None:
                log.warning("the gallery has no labels: no metrics")
            if found.labelled:
                metrics = found.metrics(tuple(cfg.eval.recall_at))
                write_metrics(metrics, out_dir / "metrics.json")
                tracker.log_metrics(metrics, step=0)
                log.info("retrieval metrics of %d queries\n%s", len(kept), format_metrics_table(metrics))
                summary["metrics"] = metrics
            shown = min(p.picture_queries, len(results))
            if shown:
                save_retrieval_grid(
                    paths[:shown], results[:shown], out_dir / "retrieval.png", k=p.top_k, query_labels=labels[:shown]
                )
            summary["gallery"] = {"index": str(index_dir), "size": index.ntotal}
        atomic.write_text(out_dir / "predict_summary.json", json.dumps(summary, indent=2), "summary")
        for artifact in ("results.json", "metrics.json", "retrieval.png", "predict_summary.json", "failed.txt"):
            if (out_dir / artifact).is_file():
                tracker.log_artifact(out_dir / artifact)
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish()
    log.info("features of %d images in %s; %s", len(kept), out_dir, tracker.describe())
    return summary
