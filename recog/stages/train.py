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

A NaN or Inf loss or gradient stops the run before the step is applied (``NonFiniteError``, naming
the step and the loss term; exit code 2), leaving ``checkpoints/last`` and ``best_model`` as they
were; with ``trainer.skip_nonfinite=true`` the step is skipped instead and counted
(``skipped_steps``, logged to MLflow).

Host synchronisation: one per step, deliberately (``StepRunner.read_flags``: "non-finite" and
"stop requested" in one small tensor, max-reduced over the ranks). Labels are checked on the host
copies the loader yields; the losses' own label checks (device read-backs) run on the first step
only; loss values are read back, and averaged over the ranks, every ``trainer.log_every`` steps.
"""

import itertools
import logging
import math
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import paddle
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm import tqdm

from recog.api import build_loss, build_model, load_splits
from recog.config import require_complete
from recog.data import build_train_loader, build_transform, set_loader_epoch
from recog.data.bad_images import FILE_NAME as BAD_IMAGES, summarize as summarize_bad_images
from recog.data.loader import dataset_options, to_device
from recog.distributed import parallel
from recog.errors import ConfigError, NonFiniteError, TrainingInterrupted
from recog.losses._pairs import label_checks
from recog.metrics import format_metrics_table
from recog.optim import build_optimizer
from recog.stages.evaluate import Evaluator, write_metrics
from recog.tracking import MlflowTracker
from recog.utils import atomic, checkpoint
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
    """One optimisation step (autocast, loss scaling), its finite check and the cross-rank stop agreement.

    Each step reads back one small flag tensor (``read_flags``): whether the loss or a gradient is
    NaN / Inf on any rank, and whether any rank was asked to stop (``stop_agreed``). A non-finite
    step raises ``NonFiniteError`` before the optimizer applies it, or with ``skip_nonfinite`` is
    dropped (no update; the LR schedule still advances) and counted in ``skipped``.

    The losses check their labels (P x K structure, label range: device read-backs) on the first
    step only: the P x K sampler gives every later batch the same structure.
    """

    def __init__(self, net: paddle.nn.Layer, amp: Optional[Amp] = None, stop: Optional[StopRequest] = None,
                 skip_nonfinite: bool = False):
        self.net = net
        self.amp = amp
        self.scaler = paddle.amp.GradScaler() if amp is not None and amp.needs_loss_scaling else None
        self.stop = stop
        self.skip_nonfinite = bool(skip_nonfinite)
        self.skipped = 0
        self.stop_agreed = False
        self.labels_checked = False
        self.parameters = [p for p in net.parameters() if not p.stop_gradient]

    def __call__(self, images, labels, optimizer, schedule, step: int = 0, epoch: int = 0) -> Dict[str, paddle.Tensor]:
        """Run global step ``step`` (from 1; for messages) of epoch ``epoch`` (from 0)."""
        with label_checks(not self.labels_checked), autocast(self.amp):
            losses = self.net(images, labels)
        self.labels_checked = True
        if self.scaler is not None:
            self.scaler.scale(losses["loss"]).backward()
        else:
            losses["loss"].backward()
        nonfinite, self.stop_agreed = self.read_flags(losses["loss"])
        if nonfinite:
            message, terms = self.describe_nonfinite(losses, step, epoch)
            optimizer.clear_grad()
            if not self.skip_nonfinite:
                raise NonFiniteError(
                    f"{message}. Stopped before applying the step: checkpoints/last and best_model/ are as they "
                    "were. Lower optimizer.lr, set trainer.grad_clip, check the data, or skip such steps with "
                    "trainer.skip_nonfinite=true", step, terms)
            self.skipped += 1
            log.warning("%s: step skipped (%d so far)", message, self.skipped)
        else:
            if self.scaler is not None:
                self.scaler.step(optimizer)
                self.scaler.update()
            else:
                optimizer.step()
            optimizer.clear_grad()
        schedule.step()
        return losses

    def read_flags(self, loss: paddle.Tensor) -> Tuple[bool, bool]:
        """``(non-finite loss or gradient on any rank, stop requested on any rank)``: the step's one
        deliberate host sync (and its one all_reduce in a data-parallel run).

        The loss is the sum of the terms, so it is non-finite iff a term is. Gradients are checked
        after backward, where ``DataParallel`` has averaged them: a NaN on one rank is on all. With
        float16 loss scaling, overflowing gradients are the scaler's to skip: the loss alone is checked.
        """
        finite = paddle.isfinite(loss.astype("float32"))
        grads = [p.grad for p in self.parameters if p.grad is not None] if self.scaler is None else []
        if grads:
            finite = finite & paddle.stack([paddle.isfinite(g).all() for g in grads]).all()
        stop = self.stop is not None and self.stop.requested
        flags = paddle.stack([(~finite).astype("int32"), paddle.full([], int(stop), dtype="int32")])
        nonfinite, stop_agreed = parallel.max_across_ranks(flags).tolist()
        return bool(nonfinite), bool(stop_agreed)

    def describe_nonfinite(self, losses: Dict[str, paddle.Tensor], step: int,
                           epoch: int) -> Tuple[str, Dict[str, float]]:
        """What was not finite, read only once it was detected: the loss terms (averaged over the
        ranks, a collective every rank reaches), else the first parameters with NaN / Inf gradients."""
        values = parallel.mean_across_ranks(losses)
        terms = {name: value for name, value in values.items() if name != "loss"}
        shown = ", ".join(f"{name} = {value:.4g}" for name, value in terms.items())
        bad = [name for name, value in terms.items() if not math.isfinite(value)]
        where = f"step {step} (epoch {epoch + 1})"
        if bad:
            return f"non-finite loss at {where}: loss term {' and '.join(repr(n) for n in bad)} ({shown})", values
        if not math.isfinite(values["loss"]):  # finite terms whose sum overflows
            return f"non-finite loss at {where}: the sum of the loss terms ({shown})", values
        names = [name for name, p in self._named_parameters() if p.grad is not None
                 and not bool(paddle.isfinite(p.grad).all())]
        listed = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        return f"non-finite gradient at {where}: {listed or 'a parameter'} (loss terms finite: {shown})", values

    def _named_parameters(self):
        for name, param in self.net.named_parameters():
            yield name.replace("_layers.", "", 1) if name.startswith("_layers.") else name, param

    def should_stop(self) -> bool:
        """Whether any rank received SIGTERM / SIGINT; a collective for the points between steps
        (after an epoch's eval and checkpoint), reached by every rank. Within an epoch each step's
        ``read_flags`` carries the agreement (``stop_agreed``)."""
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
    run_dir.mkdir(parents=True, exist_ok=True)  # loader workers may record bad images there from the start
    seed_everything(cfg.seed)
    splits = load_splits(cfg)
    labels = splits.train_labels_contiguous()
    model = build_model(cfg, class_num=splits.num_train_classes)
    cfg = _with_class_num(cfg, splits.num_train_classes)
    loss_fn = build_loss(cfg, class_num=splits.num_train_classes, embedding_size=model.embedding_size)
    data = cfg.data
    transform = build_transform(data.image_size, data.mean, data.std, train=True, hflip=splits.mirror_invariant)
    options = dataset_options(data, run_dir)
    loader = build_train_loader(splits.train, labels, transform, data.batch_size, data.samples_per_class,
                                data.num_workers, cfg.seed, rank=rank, world_size=world, options=options)
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
    runner = StepRunner(net, amp, skip_nonfinite=cfg.trainer.skip_nonfinite)
    evaluator = Evaluator(splits, cfg.data, cfg.eval, amp=amp, options=options)
    state = {"epoch": 0, "step": 0, "step_in_epoch": 0, "best": None, "mlflow_run_id": None}
    if cfg.resume:
        state = _restore(run_dir / LAST, model, loss_fn, optimizer, runner.scaler, rank, world)
        runner.skipped = state.pop("skipped_steps", 0)
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
            if (run_dir / "retrieval.png").is_file():  # a picture that could not be written was a warning
                tracker.log_artifact(run_dir / "retrieval.png")
            tracker.log_metrics({f"best_{k}": v for k, v in state["best"].items()}, step=state["step"])
        if runner.skip_nonfinite:
            tracker.log_metrics({"skipped_steps": runner.skipped}, step=state["step"])
            if runner.skipped:
                log.warning("%d training step(s) skipped for a non-finite loss or gradient", runner.skipped)
        bad_images = run_dir / BAD_IMAGES
        if is_main_process() and bad_images.is_file():
            log.warning("%s", summarize_bad_images(bad_images))
            tracker.log_artifact(bad_images)
        if is_main_process():
            atomic.write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True), "the run's config")
        tracker.log_artifact(run_dir / "config.yaml")
    except (KeyboardInterrupt, TrainingInterrupted):
        # The launcher repeats SIGTERM while a rank lives (3 times, 0.2 s apart): outside the training
        # loop's StopRequest the default handler would end the process before the status is written.
        with StopRequest():
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
    is set on any rank. One host sync per step (``StepRunner.read_flags``); loss values are read
    (and averaged over the ranks) only every ``log_every`` steps."""
    runner = runner if runner is not None else StepRunner(TrainNet(model, loss_fn),
                                                          skip_nonfinite=cfg.trainer.skip_nonfinite)
    model.train()
    if cfg.trainer.freeze_bn:
        freeze_batch_norm(model)
    log_every = max(1, cfg.trainer.log_every)
    world = parallel.world_size()
    bar = tqdm(total=steps, initial=start, desc=f"epoch {epoch + 1}/{cfg.trainer.epochs}",
               disable=not is_main_process(), dynamic_ncols=True)
    tick, images_seen = time.perf_counter(), 0
    done = start  # batches of this epoch; not bar.n, which a disabled bar (ranks > 0) does not count
    try:
        for images, labels in itertools.islice(loader, steps - start):
            # Host tensors (see build_train_loader): a copy, not a device read-back.
            loader.dataset.check_batch(labels.numpy(), training=True)
            losses = runner(to_device(images), to_device(labels), optimizer, schedule, step=step + 1, epoch=epoch)
            step += 1
            done += 1
            images_seen += images.shape[0] * world
            bar.update(1)
            if step % log_every == 0 or done == steps:
                values = parallel.mean_across_ranks(losses)
                elapsed = time.perf_counter() - tick
                values["lr"] = optimizer.get_lr()
                values["images_per_sec"] = images_seen / max(elapsed, 1e-9)
                if runner.skip_nonfinite:
                    values["skipped_steps"] = runner.skipped
                tracker.log_metrics(values, step=step)
                bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}",
                                img_s=f"{values['images_per_sec']:.0f}")
                tick, images_seen = time.perf_counter(), 0
            if done < steps and runner.stop_agreed:
                break
    finally:
        bar.close()  # also on an error: its message then starts on a line of its own
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
    if runner.skip_nonfinite:
        extra["skipped_steps"] = runner.skipped
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
    if checkpoint.has_checkpoint(run_dir / LAST):
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
