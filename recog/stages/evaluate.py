"""Eval stage: features for query and gallery, then Recall@K and mAP.

``python run.py stage=eval model_path=<run>/best_model``. The model is rebuilt from the config
saved beside its weights; the dataset and the eval settings come from the current config.

Data parallel (``launcher.nproc_per_node=N``): each rank extracts the features of a contiguous
run of whole eval batches (``recog.distributed.parallel.shard_range``), the features and labels
are gathered in rank order (padded to equal size, then trimmed), which restores the original
order, and every rank computes the metrics from the same arrays: the result is identical to a
single process's. Rank 0 writes ``metrics.json`` and logs to MLflow.
"""

import json
import logging
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import paddle
from omegaconf import DictConfig
from tqdm import tqdm

from recog.api import build_model, load_splits
from recog.data import RetrievalSplits, build_eval_loader, build_transform
from recog.distributed import parallel
from recog.errors import ConfigError
from recog.metrics import binarize, format_metrics_table, hamming_metrics, retrieval_metrics
from recog.search import GalleryIndex, retrieval_grid
from recog.tracking import MlflowTracker
from recog.utils import checkpoint
from recog.utils.precision import Amp, amp_settings, autocast
from recog.utils.runtime import is_main_process, seed_everything, select_device

log = logging.getLogger(__name__)


class Evaluator:
    """Extracts features of the eval splits with a model and scores them.

    Loaders are built once and reused, so training can evaluate every few epochs cheaply. In a
    data-parallel run (process group initialised) ``query`` and ``gallery`` load this rank's
    shard, and ``__call__`` (a collective: every rank calls it) gathers the features first.
    """

    def __init__(self, splits: RetrievalSplits, data_cfg: DictConfig, eval_cfg: DictConfig, amp: Optional[Amp] = None):
        transform = build_transform(data_cfg.image_size, data_cfg.mean, data_cfg.std, train=False, hflip=False)
        rank, world = parallel.rank(), parallel.world_size()

        def loader(samples):
            start, stop = parallel.shard_range(len(samples), data_cfg.eval_batch_size, rank, world)
            return build_eval_loader(samples[start:stop], transform, data_cfg.eval_batch_size, data_cfg.num_workers)

        self.splits = splits
        self.query = loader(splits.query)
        self.gallery = loader(splits.gallery) if splits.gallery is not None else None
        self.last = None  # (query, query_labels, gallery, gallery_labels) of the latest call
        self.recall_at = tuple(eval_cfg.recall_at)
        self.binarize = getattr(eval_cfg.binarize, "value", eval_cfg.binarize)
        # Codes come from the raw activations: normalising would move them across round's 0.5.
        self.normalize = eval_cfg.normalize and not self.binarize
        self.amp = amp

    def features(self, model: paddle.nn.Layer, loader, desc: str) -> Tuple[np.ndarray, np.ndarray]:
        """Features and labels of a whole eval split, in order (gathered over the ranks)."""
        features, labels = extract_features(model, loader, self.normalize, desc, amp=self.amp)
        return parallel.gather_rows(features), parallel.gather_rows(labels)

    def __call__(self, model: paddle.nn.Layer) -> Dict[str, float]:
        query, query_labels = self.features(model, self.query, "query")
        gallery = gallery_labels = None
        if self.gallery is not None:
            gallery, gallery_labels = self.features(model, self.gallery, "gallery")
        self.last = (query, query_labels, gallery, gallery_labels)
        if self.binarize:  # Hamming ranking of binary codes; ties: lower gallery index first
            query = binarize(query, self.binarize)
            gallery = binarize(gallery, self.binarize) if gallery is not None else None
            return hamming_metrics(query, query_labels, gallery, gallery_labels, recall_at=self.recall_at)
        return retrieval_metrics(query, query_labels, gallery, gallery_labels, recall_at=self.recall_at)


    def save_picture(self, path, queries: int = 8, k: int = 5) -> Path:
        """PNG grid of the first queries and their top-k results from the latest call's features."""
        query, query_labels, gallery, gallery_labels = self.last
        n = min(queries, len(query))
        query_paths = [s.path for s in self.splits.query]
        if gallery is None:  # query == gallery: a query's own image is not a result
            index = GalleryIndex.build(query, labels=query_labels.tolist(), paths=query_paths)
            results = index.results(query[:n], k + 1, query_paths[:n], query_labels[:n].tolist())
            for i, row in enumerate(results):
                row["results"] = [r for r in row["results"] if r["index"] != i][:k]
                for rank, r in enumerate(row["results"], 1):
                    r["rank"] = rank
        else:
            index = GalleryIndex.build(gallery, labels=gallery_labels.tolist(), paths=[s.path for s in self.splits.gallery])
            results = index.results(query[:n], k, query_paths[:n], query_labels[:n].tolist())
        return Path(retrieval_grid(query_paths[:n], results, path, k=k, query_labels=query_labels[:n].tolist()))


def extract_features(model: paddle.nn.Layer, loader, normalize: bool, desc: str = "features",
                     amp: Optional[Amp] = None) -> Tuple[np.ndarray, np.ndarray]:
    """``(features [N, D] float32, labels [N] int64)`` in loader order, in eval mode
    (``[0, 0]`` and ``[0]`` for an empty loader, e.g. a rank's empty shard)."""
    was_training = model.training
    model.eval()
    features, labels = [], []
    with paddle.no_grad():
        for images, batch_labels in tqdm(loader, desc=desc, leave=False, disable=not is_main_process()):
            batch_labels = batch_labels.numpy().reshape(-1)
            loader.dataset.raise_if_undecodable(batch_labels)
            with autocast(amp):
                out = model(images)["features"]
            out = out.astype("float32")
            if normalize:
                out = paddle.nn.functional.normalize(out, axis=1)
            features.append(out.numpy().astype(np.float32))
            labels.append(batch_labels)
    if was_training:
        model.train()
    if not features:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return np.concatenate(features), np.concatenate(labels).astype(np.int64)


def run(cfg: DictConfig, run_dir) -> Dict[str, float]:
    """Evaluate ``cfg.model_path``; writes ``metrics.json`` into ``run_dir`` and logs to MLflow."""
    if not cfg.model_path:
        raise ConfigError("stage=eval needs a trained model: model_path=<run dir>/best_model")
    model_path = Path(cfg.model_path)
    if not (model_path / checkpoint.MODEL_FILE).is_file():
        raise ConfigError(f"model_path={model_path} holds no {checkpoint.MODEL_FILE}: point it at a run's best_model/")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    amp = amp_settings(cfg.trainer)
    select_device(cfg.trainer.device)
    _, world = parallel.init_distributed()
    seed_everything(cfg.seed)
    trained_cfg = checkpoint.load_config(model_path)
    model = build_model(trained_cfg)
    checkpoint.load_model_weights(model_path, model)
    splits = load_splits(cfg)
    tracker = MlflowTracker(cfg, stage="eval")
    tracker.set_tag("recog.world_size", str(world))
    try:
        metrics = Evaluator(splits, trained_cfg.data, cfg.eval, amp=amp)(model)
        if is_main_process():
            write_metrics(metrics, run_dir / "metrics.json")
        log.info("metrics of %s\n%s", model_path, format_metrics_table(metrics))
        tracker.log_metrics(metrics, step=0)
        tracker.log_artifact(run_dir / "metrics.json")
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish()
    log.info(tracker.describe())
    return metrics


def write_metrics(metrics: Dict[str, float], path: Path) -> None:
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True))
