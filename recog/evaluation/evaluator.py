"""Features of the eval splits and their retrieval metrics (Recall@K, mAP, ...), shared by the
train and eval stages.

Data parallel (``launcher.nproc_per_node=N``): each rank extracts the features of a contiguous
run of whole eval batches (``recog.distributed.parallel.shard_range``), the features and labels
are gathered in rank order (padded to equal size, then trimmed), which restores the original
order, and every rank computes the metrics from the same arrays: the result is identical to a
single process's.

Feature extraction (``eval.engine``): ``dygraph`` runs the model; ``predictor`` a Paddle Inference
predictor of its feature path (``recog.inference.eval_predictor``: oneDNN on the CPU, several times
faster, refreshed with the current weights before each eval and checked against the dygraph model);
``auto`` (the default) the predictor on the CPU when this process's eval images add up to at least
``eval.predictor_min_megapixels`` (at ``data.image_size``): below that its one-time set-up (tracing
the graph, probing oneDNN in a child process: about 5 s) costs more than it saves. Dygraph otherwise,
and whenever the predictor cannot reproduce the model.
"""

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import paddle
from omegaconf import DictConfig
from tqdm import tqdm

from recog.data import RetrievalSplits, build_eval_loader, build_transform
from recog.data.loader import to_device
from recog.distributed import parallel
from recog.errors import ConfigError
from recog.evaluation import report
from recog.evaluation.calibration import MAX_TARGET_FMR, check_target_fmr, threshold_from_metrics
from recog.evaluation.report import PICTURE_K
from recog.inference.eval_predictor import EvalPredictor
from recog.inference.threshold import Threshold
from recog.metrics import RetrievalResults, binarize, rank
from recog.postprocess import Pipeline, build_postprocess
from recog.utils.precision import Amp, autocast
from recog.utils.runtime import is_main_process

log = logging.getLogger(__name__)


class EvalInterrupted(Exception):
    """Feature extraction stopped between two batches because a stop was requested (SIGINT / SIGTERM)."""


class Evaluator:
    """Extracts features of the eval splits with a model and scores them.

    Loaders are built once and reused, so training can evaluate every few epochs cheaply, and so
    is the predictor (``eval.engine``). In a data-parallel run (process group initialised) ``query``
    and ``gallery`` load this rank's shard, and ``__call__`` (a collective: every rank calls it)
    gathers the features first.

    Each call ranks the gallery once (``recog.metrics.rank``), between the post-processing's
    ``expand`` and ``rerank`` (``postprocess``: a ``Pipeline`` or the ``postprocess`` config node),
    and keeps the ``RetrievalResults`` in ``results``: the metrics and the pictures
    (``save_report``: the first queries, the worst, those of lowest AP, and the pair scores) read it.
    The ranking also collects the scores of all positive and negative pairs, from which each call
    calibrates the decision threshold at ``eval.target_fmr`` (``recog.evaluation.calibration``):
    its metrics join the ranking metrics, and the ``Threshold`` is kept in ``threshold``.

    ``stop`` (a ``recog.utils.interrupt.StopRequest``, set by the stage that owns the signal
    handlers): once it is requested, extraction stops after the current batch on every rank (each
    rank still reaches the same gathers) and ``__call__`` raises ``EvalInterrupted``: Ctrl-C or
    SIGTERM during an eval stops within about one batch instead of waiting for the whole eval.
    """

    def __init__(
        self,
        splits: RetrievalSplits,
        data_cfg: DictConfig,
        eval_cfg: DictConfig,
        amp: Amp | None = None,
        options: dict[str, Any] | None = None,
        postprocess=None,
    ):
        """``data_cfg``: the trained model's (image size, normalisation); ``options``: the eval
        loaders' dataset arguments (``recog.data.loader.dataset_options``); ``postprocess``: the
        post-processing (a ``Pipeline``, or a ``postprocess`` config node; None: none)."""
        transform = build_transform(data_cfg.image_size, data_cfg.mean, data_cfg.std, train=False, hflip=False)
        rank, world = parallel.rank(), parallel.world_size()

        self.first_index = {}  # loader -> index in its split of the loader's first sample (the shard start)

        def loader(samples):
            start, stop = parallel.shard_range(len(samples), data_cfg.eval_batch_size, rank, world)
            built = build_eval_loader(
                samples[start:stop], transform, data_cfg.eval_batch_size, data_cfg.num_workers, options
            )
            self.first_index[built] = start
            return built

        self.splits = splits
        self.query = loader(splits.query)
        self.gallery = loader(splits.gallery) if splits.gallery is not None else None
        self.last = None  # (query, query_labels, gallery, gallery_labels) of the latest call
        self.last_kept = None  # (query, gallery) indices into the splits of the rows of ``last``
        self.results: RetrievalResults | None = None  # the latest call's ranking
        self.recall_at = tuple(eval_cfg.recall_at)
        self.target_fmr = check_target_fmr(eval_cfg.target_fmr)
        self.threshold: Threshold | None = None  # calibrated by the latest call
        self.binarize = getattr(eval_cfg.binarize, "value", eval_cfg.binarize)
        # Codes come from the raw activations: normalising would move them across round's 0.5.
        self.normalize = eval_cfg.normalize and not self.binarize
        self.post = postprocess if isinstance(postprocess, Pipeline) else build_postprocess(postprocess)
        if self.binarize and self.post.real_only:
            raise ConfigError(f"postprocess ({self.post.describe()}) needs real features, not eval.binarize codes")
        if self.post.extracts and not getattr(splits, "mirror_invariant", True):
            log.warning(
                "postprocess=flip on a dataset that is not mirror-invariant: a mirrored image may not "
                "look like its class (digits, text), and the averaged features can be worse"
            )
        self.amp = amp
        self.image_size = int(data_cfg.image_size)
        self.engine = str(getattr(eval_cfg.engine, "value", eval_cfg.engine))
        self.predictor_min_megapixels = float(eval_cfg.predictor_min_megapixels)
        self.predictor: EvalPredictor | None = None
        self.engine_used: str | None = None  # "dygraph" or "predictor" at the latest call
        self.stop = None  # a StopRequest, or None: extract every batch

    def features(self, model: paddle.nn.Layer, loader, desc: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Features, labels and indices in the split of a whole eval split's usable samples, in
        order (gathered over the ranks; samples whose image was bad are left out)."""
        predictor = self.predictor if self.engine_used == "predictor" else None
        kept = []
        features, labels = extract_features(
            model,
            loader,
            self.normalize,
            desc,
            amp=self.amp,
            predictor=predictor,
            kept=kept,
            should_stop=self._stop_requested,
            post=self.post,
        )
        indices = np.concatenate(kept).astype(np.int64) + self.first_index[loader] if kept else np.zeros(0, np.int64)
        return parallel.gather_rows(features), parallel.gather_rows(labels), parallel.gather_rows(indices)

    def __call__(self, model: paddle.nn.Layer) -> dict[str, float]:
        started = time.perf_counter()
        self.engine_used = "predictor" if self._prepare_predictor(model) else "dygraph"
        query, query_labels, query_kept = self.features(model, self.query, "query")
        gallery = gallery_labels = gallery_kept = None
        if self.gallery is not None:
            gallery, gallery_labels, gallery_kept = self.features(model, self.gallery, "gallery")
        if self.stop is not None and parallel.any_rank(self.stop.requested):  # every rank reaches this
            raise EvalInterrupted(
                f"eval stopped by {self.stop.name(self.stop.signum or 15)} after {time.perf_counter() - started:.1f} s"
            )
        self.last = (query, query_labels, gallery, gallery_labels)
        self.last_kept = (query_kept, gallery_kept)
        log.info(
            "eval features of %d images in %.1f s (%s)",
            self.num_images(),
            time.perf_counter() - started,
            self.engine_used,
        )
        self.results = self.rank(query, query_labels, gallery, gallery_labels)
        metrics = self.results.metrics(self.recall_at)
        metrics.update(self.results.pairs.summary(self.target_fmr))
        self.threshold = threshold_from_metrics(metrics, self.target_fmr, binary=bool(self.binarize))
        return metrics

    def rank(self, query, query_labels, gallery=None, gallery_labels=None) -> RetrievalResults:
        """The post-processed ranking of the gallery (None: the queries) for the queries, with the
        splits' paths of the latest call's rows; binary codes (``eval.binarize``) by Hamming distance."""
        query_kept, gallery_kept = self.last_kept
        options = {
            "query_paths": [self.splits.query[i].path for i in query_kept],
            "gallery_paths": None if gallery is None else [self.splits.gallery[i].path for i in gallery_kept],
            "k": PICTURE_K,
            "pairs": MAX_TARGET_FMR,  # the pair scores, exact for thresholds up to this FMR
        }
        if self.binarize:  # Hamming ranking of binary codes; ties: lower gallery index first
            codes = binarize(gallery, self.binarize) if gallery is not None else None
            return rank(binarize(query, self.binarize), query_labels, codes, gallery_labels, binary=True, **options)
        return self.post.rank(query, query_labels, gallery, gallery_labels, **options)

    def _stop_requested(self) -> bool:
        return self.stop is not None and self.stop.requested

    def num_images(self) -> int:
        """Eval images this process extracts (its shards of query and gallery)."""
        return len(self.query.dataset) + (len(self.gallery.dataset) if self.gallery is not None else 0)

    def wants_predictor(self) -> bool:
        """Whether ``eval.engine`` asks for the predictor here (``auto``: on the CPU, float32, at
        least ``eval.predictor_min_megapixels`` of eval images on this process)."""
        if self.engine == "predictor":
            return True
        if self.engine != "auto" or self.amp is not None or paddle.get_device() != "cpu":
            return False
        return self.num_images() * self.image_size**2 >= self.predictor_min_megapixels * 1e6

    def _prepare_predictor(self, model: paddle.nn.Layer) -> bool:
        """Bring the predictor up to ``model``'s current weights; False: extract with dygraph
        (``auto`` falls back, with a warning, when the predictor cannot reproduce the model)."""
        if not self.wants_predictor():
            return False
        try:
            if self.predictor is None or self.predictor.model is not model:
                self.predictor = EvalPredictor(model, self.normalize, self.image_size, device=paddle.get_device())
            self.predictor.refresh()
        except Exception as error:  # a model to_static cannot convert, a oneDNN mismatch, ...
            if self.engine == "predictor":
                raise
            log.warning(
                "eval.engine=auto: extracting features with the dygraph model, the predictor failed (%s: %s)",
                type(error).__name__,
                error,
            )
            self.engine = "dygraph"  # for the rest of the run
            self.predictor = None
            return False
        if self.engine_used is None:
            log.info("eval features: Paddle Inference predictor (oneDNN mode %s)", self.predictor.onednn)
        return True

    def save_picture(self, path, queries: int = 8, k: int = PICTURE_K, worst: bool = False) -> Path | None:
        """The latest call's picture of the first queries, or with ``worst`` of the queries of lowest
        AP (``recog.evaluation.report.save_picture``)."""
        return report.save_picture(self.results, path, queries, k, worst)

    def save_report(self, directory) -> list[Path]:
        """The latest call's report in ``directory`` (``REPORT_FILES``: the pictures of the first and
        of the worst queries, the pair scores' picture, ``threshold.json``); the files written."""
        return report.save_report(self.results, self.threshold, directory)


def extract_features(
    model: paddle.nn.Layer,
    loader,
    normalize: bool,
    desc: str = "features",
    amp: Amp | None = None,
    predictor: EvalPredictor | None = None,
    kept: list[np.ndarray] | None = None,
    should_stop: Callable[[], bool] | None = None,
    post: Pipeline | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(features [N, D] float32, labels [N] int64)`` in loader order, in eval mode
    (``[0, 0]`` and ``[0]`` for an empty loader, e.g. a rank's empty shard).

    Samples whose image was bad are left out (``dataset.check_batch``); ``kept``, if given, receives
    the loader positions of the rows returned, one array per batch. With ``predictor`` (refreshed
    with ``model``'s weights, normalising as ``normalize`` says) it computes the features instead
    of the dygraph model. ``should_stop``, checked before each batch: True ends the extraction
    early (the rows so far are returned; the caller decides what a partial result means).
    ``post``: the post-processing, whose ``features_of`` may change the features (``postprocess=flip``:
    the mean of each image's and its mirror's).
    """
    post = post or Pipeline()

    def forward(images: paddle.Tensor) -> np.ndarray:
        if predictor is not None:
            return predictor.predict(images.numpy())
        with autocast(amp):
            out = model(to_device(images))["features"]
        out = out.astype("float32")
        if normalize:
            out = paddle.nn.functional.normalize(out, axis=1)
        return out.numpy().astype(np.float32)

    was_training = model.training
    model.eval()
    features, labels = [], []
    position = 0
    with paddle.no_grad():
        for images, batch_labels in tqdm(loader, desc=desc, leave=False, disable=not is_main_process()):
            if should_stop is not None and should_stop():
                break
            batch_labels = batch_labels.numpy().reshape(-1)
            keep = loader.dataset.check_batch(batch_labels)  # host labels: a copy, not a device read-back
            out = post.features_of(forward, images, normalize)
            features.append(out[keep])
            labels.append(batch_labels[keep])
            if kept is not None:
                kept.append(position + np.flatnonzero(keep))
            position += len(batch_labels)
    if was_training:
        model.train()
    if not features:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return np.concatenate(features), np.concatenate(labels).astype(np.int64)
