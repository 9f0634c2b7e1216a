"""Train stage: P x K batches, weighted losses, eval every few epochs, best model by Recall@1.

Writes into the run directory::

    checkpoints/last/   weights, optimizer (with the LR-schedule position), epoch, step within the
                        epoch, RNG states and MLflow run id (for resume=true)
    best_model/         weights + resolved config of the best eval so far
    metrics.json        the best model's metrics
    retrieval.png       the best model's top-5 results for the first eval queries

Data parallel (started by ``paddle.distributed.launch``, see recog/distributed/launch.py): every
rank builds the same model (rank 0's weights are broadcast), trains on its share of each P x K
step through ``paddle.DataParallel`` (gradients averaged over the ranks), evaluates its shard of
the eval set; rank 0 alone logs to MLflow, draws progress bars and writes files.

SIGTERM / SIGINT during training: the ranks agree to stop after the current step, rank 0 writes
``checkpoints/last`` (mid-epoch), the MLflow run is marked KILLED, and ``TrainingInterrupted`` is
raised (``run.py`` exits 143 / 130). ``resume=true`` continues from that step exactly.
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
from recog.distributed import parallel
from recog.errors import ConfigError, TrainingInterrupted
from recog.metrics import format_metrics_table
from recog.optim import build_optimizer
from recog.stages.evaluate import Evaluator, write_metrics
from recog.tracking import MlflowTracker
from recog.utils import checkpoint
from recog.utils.interrupt import StopRequest
from recog.utils.precision import Amp, amp_settings, autocast
from recog.utils.runtime import (get_rng_state, has_gpu, is_main_process, seed_everything, select_device,
                                  set_rng_state)

log = logging.getLogger(__name__)

LAST, BEST = Path("checkpoints") / "last", Path("best_model")


class TrainNet(paddle.nn.Layer):
    """Model and loss as one layer: what ``paddle.DataParallel`` wraps, so that parameters of the
    loss (e.g. CenterLoss's centres) are synchronised like the model's."""

    def __init__(self, model: paddle.nn.Layer, loss_fn: paddle.nn.Layer):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, images, labels):
        return self.loss_fn(self.model(images, labels), labels)


class StepRunner:
    """One optimisation step (autocast, loss scaling) and the cross-rank stop agreement."""

    def __init__(self, net: paddle.nn.Layer, amp: Optional[Amp] = None, stop: Optional[StopRequest] = None):
        self.net = net
        self.amp = amp
        self.scaler = paddle.amp.GradScaler() if amp is not None and amp.needs_loss_scaling else None
        self.stop = stop

    def __call__(self, images, labels, optimizer, schedule) -> Dict[str, paddle.Tensor]:
        with autocast(self.amp):
            losses = self.net(images, labels)
        if self.scaler is not None:
            self.scaler.scale(losses["loss"]).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            losses["loss"].backward()
            optimizer.step()
        optimizer.clear_grad()
        schedule.step()
        return losses

    def should_stop(self) -> bool:
        """Whether any rank received SIGTERM / SIGINT; a collective, reached by every rank at the
        same step boundaries, so that all ranks stop after the same step."""
        return self.stop is not None and parallel.any_rank(self.stop.requested)


def run(cfg: DictConfig, run_dir) -> Dict[str, float]:
    """Train ``cfg``'s model on ``cfg.dataset``; returns the best eval metrics."""
    require_complete(cfg)
    run_dir = Path(run_dir)
    amp = amp_settings(cfg.trainer)  # fails before any work when mixed precision cannot run here
    device_name = getattr(cfg.trainer.device, "value", cfg.trainer.device)
    if cfg.trainer.sync_bn and parallel.launched_world_size() > 1 and (device_name == "cpu" or not has_gpu()):
        raise ConfigError("trainer.sync_bn=true needs GPUs: Paddle has no CPU kernel for SyncBatchNorm; "
                          "drop it on CPU (trainer.freeze_bn=true avoids per-process batch statistics)")
    select_device(cfg.trainer.device, ["trainer.sync_bn=true"] if cfg.trainer.sync_bn else [])
    rank, world = parallel.init_distributed()
    if cfg.resume:
        run_dir = find_run_to_resume(cfg, run_dir)
    seed_everything(cfg.seed)
    splits = load_splits(cfg)
    labels = splits.train_labels_contiguous()
    model = build_model(cfg, class_num=splits.num_train_classes)
    cfg = _with_class_num(cfg, splits.num_train_classes)
    loss_fn = build_loss(cfg, class_num=splits.num_train_classes, embedding_size=model.embedding_size)
    data = cfg.data
    transform = build_transform(data.image_size, data.mean, data.std, train=True, hflip=splits.mirror_invariant)
    loader = build_train_loader(splits.train, labels, transform, data.batch_size, data.samples_per_class,
                                data.num_workers, cfg.seed, rank=rank, world_size=world)
    steps_per_epoch = min(len(loader), cfg.trainer.steps_per_epoch or len(loader))
    if cfg.trainer.sync_bn and world > 1:
        model = paddle.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # Some losses learn too (CenterLoss's centres): they are optimised and checkpointed with the model.
    optimizer, schedule = build_optimizer(cfg, model.parameters() + loss_fn.parameters(), steps_per_epoch)
    if amp is not None and amp.level == "O2":  # float16/bfloat16 weights, float32 master copies
        model, optimizer = paddle.amp.decorate(models=model, optimizers=optimizer, level="O2", dtype=amp.dtype,
                                               save_dtype="float32")
    net = TrainNet(model, loss_fn)
    if world > 1:  # broadcasts rank 0's weights; gradients are averaged over the ranks
        net = paddle.DataParallel(net, find_unused_parameters=_has_unused_parameters(model, loss_fn))
        paddle.seed(cfg.seed + rank)  # same weights everywhere, but each rank its own dropout masks
    runner = StepRunner(net, amp)
    evaluator = Evaluator(splits, cfg.data, cfg.eval, amp=amp)
    state = {"epoch": 0, "step": 0, "step_in_epoch": 0, "best": None, "mlflow_run_id": None}
    if cfg.resume:
        state = _restore(run_dir / LAST, model, loss_fn, optimizer, runner.scaler, rank, world)
        log.info("resuming %s at epoch %d, step %d of %d", run_dir, state["epoch"] + 1, state["step_in_epoch"],
                 steps_per_epoch)
        if state["step_in_epoch"] >= steps_per_epoch:
            raise ConfigError(f"the checkpoint stopped at step {state['step_in_epoch']} of an epoch that now has "
                              f"{steps_per_epoch}: resume with the same data and trainer.steps_per_epoch")

    tracker = MlflowTracker(cfg, stage="train", run_id=state["mlflow_run_id"])
    state["mlflow_run_id"] = tracker.run_id
    tracker.set_tag("recog.world_size", str(world))
    log.info("%s: %d train images in %d classes, %d steps per epoch%s; %s", model.__class__.__name__,
             len(splits.train), splits.num_train_classes, steps_per_epoch,
             f" on each of {world} processes (batch {data.batch_size} per process)" if world > 1 else "",
             tracker.describe())
    try:
        with StopRequest() as stop:
            runner.stop = stop
            for epoch in range(state["epoch"], cfg.trainer.epochs):
                start = state["step_in_epoch"] if epoch == state["epoch"] else 0
                set_loader_epoch(loader, epoch, start)
                before = state["step"]
                state["step"] = train_one_epoch(model, loss_fn, optimizer, schedule, loader, cfg, epoch, state["step"],
                                                tracker, steps_per_epoch, start=start, runner=runner)
                if start + state["step"] - before < steps_per_epoch:  # all ranks agreed to stop
                    state["step_in_epoch"] = start + state["step"] - before
                    _save_last(run_dir, model, cfg, state, optimizer, loss_fn, runner, world, finished=False)
                    raise _interrupted(stop, run_dir, state)
                state["epoch"], state["step_in_epoch"] = epoch + 1, 0
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
                _save_last(run_dir, model, cfg, state, optimizer, loss_fn, runner, world, finished=last_epoch)
                if not last_epoch and runner.should_stop():
                    raise _interrupted(stop, run_dir, state)
        if state["best"] is not None:
            tracker.log_artifact(run_dir / BEST)
            tracker.log_artifact(run_dir / "metrics.json")
            tracker.log_artifact(run_dir / "retrieval.png")
            tracker.log_metrics({f"best_{k}": v for k, v in state["best"].items()}, step=state["step"])
        if is_main_process():
            (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        tracker.log_artifact(run_dir / "config.yaml")
    except (KeyboardInterrupt, TrainingInterrupted):
        tracker.finish("KILLED")
        raise
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish()
    log.info("best model: %s (Recall@1 %.4f); %s", run_dir / BEST, _score(state["best"] or {}), tracker.describe())
    return state["best"] or {}


def train_one_epoch(model, loss_fn, optimizer, schedule, loader, cfg, epoch: int, step: int,
                    tracker: MlflowTracker, steps: int, start: int = 0, runner: Optional[StepRunner] = None) -> int:
    """Batches ``start .. steps - 1`` of the epoch (after ``set_loader_epoch(loader, epoch, start)``);
    returns the global step count. Stops early, after a whole step, when the runner's stop request
    is set on any rank. Host syncs (and cross-rank loss averages) only every ``log_every`` steps."""
    runner = runner if runner is not None else StepRunner(TrainNet(model, loss_fn))
    model.train()
    if cfg.trainer.freeze_bn:
        freeze_batch_norm(model)
    log_every = max(1, cfg.trainer.log_every)
    world = parallel.world_size()
    bar = tqdm(total=steps, initial=start, desc=f"epoch {epoch + 1}/{cfg.trainer.epochs}",
               disable=not is_main_process(), dynamic_ncols=True)
    tick, images_seen = time.perf_counter(), 0
    done = start  # batches of this epoch; not bar.n, which a disabled bar (ranks > 0) does not count
    for images, labels in itertools.islice(loader, steps - start):
        loader.dataset.raise_if_undecodable(labels.numpy())
        losses = runner(images, labels, optimizer, schedule)
        step += 1
        done += 1
        images_seen += images.shape[0] * world
        bar.update(1)
        if step % log_every == 0 or done == steps:
            values = parallel.mean_across_ranks(losses)
            elapsed = time.perf_counter() - tick
            values["lr"] = optimizer.get_lr()
            values["images_per_sec"] = images_seen / max(elapsed, 1e-9)
            tracker.log_metrics(values, step=step)
            bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}", img_s=f"{values['images_per_sec']:.0f}")
            tick, images_seen = time.perf_counter(), 0
        if done < steps and runner.should_stop():
            break
    bar.close()
    return step


def freeze_batch_norm(model: paddle.nn.Layer) -> None:
    """Put every BatchNorm layer in eval mode: normalise with the running statistics, leave them
    unchanged (scale and shift still train)."""
    for layer in model.sublayers(include_self=True):
        if isinstance(layer, paddle.nn.layer.norm._BatchNormBase):
            layer.eval()


def _has_unused_parameters(model, loss_fn) -> bool:
    """Whether some trainable parameters get no gradient (``DataParallel(find_unused_parameters=)``):
    a head or neck whose output no loss term reads, or a multi-scale neck that skips the
    backbone's last layers."""
    read = set(loss_fn.inputs.values())
    if model.head is not None and "logits" not in read:
        return True
    if model.neck is not None and not read & {"logits", "features"}:
        return True
    return bool(getattr(model.neck, "multi_scale", False))


def _save_last(run_dir: Path, model, cfg, state: dict, optimizer, loss_fn, runner: StepRunner, world: int,
               finished: bool) -> None:
    """``checkpoints/last`` with every rank's RNG state; every rank must call it (a gather)."""
    rng = parallel.gather_objects(get_rng_state())
    if not is_main_process():
        return
    extra = {"finished": finished, "world_size": world, "rng": rng}
    if runner.scaler is not None:
        extra["grad_scaler"] = runner.scaler.state_dict()
    checkpoint.save_checkpoint(run_dir / LAST, model, cfg, dict(state, **extra), optimizer, loss_fn)


def _interrupted(stop: StopRequest, run_dir: Path, state: dict) -> TrainingInterrupted:
    import signal

    signum = stop.signum or signal.SIGTERM  # another rank may have received it
    where = (f"epoch {state['epoch'] + 1}, step {state['step_in_epoch']}" if state["step_in_epoch"]
             else f"the end of epoch {state['epoch']}")
    return TrainingInterrupted(
        f"stopped by {StopRequest.name(signum)} at {where} (global step {state['step']}); checkpoint "
        f"{run_dir / LAST}; continue with resume=true hydra.run.dir={run_dir}", signum)


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


def _restore(path: Path, model, loss_fn, optimizer, scaler, rank: int, world: int) -> dict:
    checkpoint.load_model_weights(path, model)
    checkpoint.load_loss_state(path, loss_fn)
    checkpoint.load_optimizer_state(path, optimizer, model, loss_fn)
    state = checkpoint.load_state(path)
    state.pop("optimizer", None)
    state.pop("finished", None)
    state.setdefault("step_in_epoch", 0)  # checkpoints of older versions: epoch boundaries only
    saved_world = state.pop("world_size", 1)
    rng = state.pop("rng", None)
    scaler_state = state.pop("grad_scaler", None)
    if saved_world != world:
        if state["step_in_epoch"]:
            raise ConfigError(f"{path} was saved mid-epoch by {saved_world} process(es): resume it with "
                              f"launcher.nproc_per_node={saved_world} (a P x K epoch depends on the process count)")
        log.warning("%s was saved by %d process(es), resuming with %d: the data order and random streams "
                    "differ from an uninterrupted run", path, saved_world, world)
    elif rng is not None:
        set_rng_state(rng[rank])
    if scaler is not None and scaler_state:
        scaler.load_state_dict(scaler_state)
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
