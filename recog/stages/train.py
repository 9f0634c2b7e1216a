"""Train stage: P x K batches, weighted losses, eval every few epochs, best model by Recall@1.

Writes into the run directory::

    checkpoints/last/   weights, optimizer, epoch and MLflow run id (for resume=true)
    best_model/         weights + resolved config of the best eval so far
    metrics.json        the best model's metrics
    retrieval.png       the best model's top-5 results for the first eval queries
"""

import itertools
import logging
import time
from pathlib import Path
from typing import Dict, Optional

import paddle
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm import tqdm

from recog.api import build_loss, build_model, load_splits
from recog.config import require_complete
from recog.data import build_train_loader, build_transform, set_loader_epoch
from recog.errors import ConfigError
from recog.metrics import format_metrics_table
from recog.optim import build_optimizer
from recog.stages.evaluate import Evaluator, write_metrics
from recog.tracking import MlflowTracker
from recog.utils import checkpoint
from recog.utils.runtime import is_main_process, seed_everything, select_device

log = logging.getLogger(__name__)

LAST, BEST = Path("checkpoints") / "last", Path("best_model")


def run(cfg: DictConfig, run_dir) -> Dict[str, float]:
    """Train ``cfg``'s model on ``cfg.dataset``; returns the best eval metrics."""
    require_complete(cfg)
    run_dir = Path(run_dir)
    if cfg.resume:
        run_dir = find_run_to_resume(cfg, run_dir)
    select_device(cfg.trainer.device)
    seed_everything(cfg.seed)
    splits = load_splits(cfg)
    labels = splits.train_labels_contiguous()
    model = build_model(cfg, class_num=splits.num_train_classes)
    cfg = _with_class_num(cfg, splits.num_train_classes)
    loss_fn = build_loss(cfg, class_num=splits.num_train_classes, embedding_size=model.embedding_size)
    data = cfg.data
    transform = build_transform(data.image_size, data.mean, data.std, train=True, hflip=splits.mirror_invariant)
    loader = build_train_loader(splits.train, labels, transform, data.batch_size, data.samples_per_class,
                                data.num_workers, cfg.seed)
    steps_per_epoch = min(len(loader), cfg.trainer.steps_per_epoch or len(loader))
    # Some losses learn too (CenterLoss's centres): they are optimised and checkpointed with the model.
    optimizer, schedule = build_optimizer(cfg, model.parameters() + loss_fn.parameters(), steps_per_epoch)
    evaluator = Evaluator(splits, cfg.data, cfg.eval)
    state = {"epoch": 0, "step": 0, "best": None, "mlflow_run_id": None}
    if cfg.resume:
        state = _restore(run_dir / LAST, model, loss_fn, optimizer)
        log.info("resuming %s after epoch %d", run_dir, state["epoch"])

    tracker = MlflowTracker(cfg, stage="train", run_id=state["mlflow_run_id"])
    state["mlflow_run_id"] = tracker.run_id
    log.info("%s: %d train images in %d classes, %d steps per epoch; %s", model.__class__.__name__,
             len(splits.train), splits.num_train_classes, len(loader), tracker.describe())
    try:
        for epoch in range(state["epoch"], cfg.trainer.epochs):
            set_loader_epoch(loader, epoch)
            state["step"] = train_one_epoch(model, loss_fn, optimizer, schedule, loader, cfg, epoch, state["step"], tracker,
                                            steps_per_epoch)
            state["epoch"] = epoch + 1
            last_epoch = epoch + 1 == cfg.trainer.epochs
            if last_epoch or (epoch + 1) % cfg.trainer.eval_every == 0:
                metrics = evaluator(model)
                tracker.log_metrics(metrics, step=state["step"])
                log.info("epoch %d eval\n%s", epoch + 1, format_metrics_table(metrics))
                if state["best"] is None or _score(metrics) > _score(state["best"]):
                    state["best"] = dict(metrics, epoch=epoch + 1)
                    if is_main_process():
                        checkpoint.save_checkpoint(run_dir / BEST, model, cfg, state)
                        write_metrics(state["best"], run_dir / "metrics.json")
                        evaluator.save_picture(run_dir / "retrieval.png")
            if is_main_process():
                checkpoint.save_checkpoint(run_dir / LAST, model, cfg, dict(state, finished=last_epoch), optimizer, loss_fn)
        if state["best"] is not None:
            tracker.log_artifact(run_dir / BEST)
            tracker.log_artifact(run_dir / "metrics.json")
            tracker.log_artifact(run_dir / "retrieval.png")
            tracker.log_metrics({f"best_{k}": v for k, v in state["best"].items()}, step=state["step"])
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        tracker.log_artifact(run_dir / "config.yaml")
    except KeyboardInterrupt:
        tracker.finish("KILLED")
        raise
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish()
    log.info("best model: %s (Recall@1 %.4f); %s", run_dir / BEST, _score(state["best"] or {}), tracker.describe())
    return state["best"] or {}


def train_one_epoch(model, loss_fn, optimizer, schedule, loader, cfg, epoch: int, step: int,
                    tracker: MlflowTracker, steps: int) -> int:
    """``steps`` batches of ``loader``; returns the global step count. Host syncs only every log_every."""
    model.train()
    log_every = max(1, cfg.trainer.log_every)
    bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.trainer.epochs}", disable=not is_main_process(),
               dynamic_ncols=True)
    tick, images_seen = time.perf_counter(), 0
    for images, labels in itertools.islice(loader, steps):
        loader.dataset.raise_if_undecodable(labels.numpy())
        outputs = model(images, labels)
        losses = loss_fn(outputs, labels)
        losses["loss"].backward()
        optimizer.step()
        optimizer.clear_grad()
        schedule.step()
        step += 1
        images_seen += images.shape[0]
        bar.update(1)
        if step % log_every == 0 or bar.n == steps:
            values = {name: float(value) for name, value in losses.items()}
            elapsed = time.perf_counter() - tick
            values["lr"] = optimizer.get_lr()
            values["images_per_sec"] = images_seen / max(elapsed, 1e-9)
            tracker.log_metrics(values, step=step)
            bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}", img_s=f"{values['images_per_sec']:.0f}")
            tick, images_seen = time.perf_counter(), 0
    bar.close()
    return step


def find_run_to_resume(cfg: DictConfig, run_dir: Path) -> Path:
    """The run dir whose ``checkpoints/last`` to continue: this one if it has one (e.g.
    ``hydra.run.dir=<old run>``), else the newest unfinished run under ``paths.output_root/runs``."""
    if (run_dir / LAST / checkpoint.STATE_FILE).is_file():
        return run_dir
    runs = sorted(Path(cfg.paths.output_root).glob(f"runs/*/{LAST}/{checkpoint.STATE_FILE}"), reverse=True)
    for state_file in runs:
        if not checkpoint.load_state(state_file.parent).get("finished", False):
            return state_file.parents[2]
    raise ConfigError(f"resume=true but no unfinished run with a {LAST} checkpoint was found under "
                      f"{Path(cfg.paths.output_root) / 'runs'}; pass hydra.run.dir=<run dir> to pick one")


def _restore(path: Path, model, loss_fn, optimizer) -> dict:
    checkpoint.load_model_weights(path, model)
    checkpoint.load_loss_state(path, loss_fn)
    checkpoint.load_optimizer_state(path, optimizer, model, loss_fn)
    state = checkpoint.load_state(path)
    state.pop("optimizer", None)
    state.pop("finished", None)
    return state


def _with_class_num(cfg: DictConfig, class_num: int) -> DictConfig:
    """A copy with ``head.class_num`` filled in, so a saved config rebuilds the same model."""
    cfg = cfg.copy()
    if cfg.head is not None and cfg.head.class_num is None:
        with open_dict(cfg):
            cfg.head.class_num = class_num
    return cfg


def _score(metrics: Dict[str, float]) -> float:
    """Model selection: Recall@1, or the first recall reported."""
    recalls = [k for k in metrics if k.startswith("recall_at_")]
    key = "recall_at_1" if "recall_at_1" in metrics else (recalls[0] if recalls else None)
    return float(metrics[key]) if key else float("-inf")
