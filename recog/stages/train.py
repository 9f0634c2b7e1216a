"""Train stage: P x K batches, weighted losses, eval every few epochs, best model by ``trainer.monitor``.

Writes into the run directory::

    checkpoints/last/   weights, optimizer (with the LR-schedule position), epoch, step within the
                        epoch, RNG states and MLflow run id (for resume=true; recog/training/resume.py)
    best_model/         weights + resolved config of the best eval so far (highest trainer.monitor)
    metrics.json        the best model's metrics
    retrieval.png       the best model's top-5 results for the first eval queries
    worst_queries.png   the same for the eval queries of lowest AP
    pair_scores.png     the best model's pair-score histograms and DET curve
    threshold.json      its decision threshold at eval.target_fmr (the export carries it)
    config.yaml         the run's resolved config, at the end
    .recog.lock         while training: host and PID of the process (one training per run dir)

The parts: ``recog.training.step`` (one step, its finite check; owns optimizer and schedule),
``recog.training.loop`` (the epochs, eval, best model, stop on a signal), ``recog.training.resume``
(checkpoints, the run to resume and its config), ``recog.evaluation`` (features and metrics).

Data parallel (started by ``paddle.distributed.launch``, see recog/distributed/launch.py): every
rank builds the same model (rank 0's weights are broadcast), trains on its share of each P x K
step through ``paddle.DataParallel`` (gradients averaged over the ranks), evaluates its shard of
the eval set; rank 0 alone logs to MLflow, draws progress bars and writes files.

SIGTERM / SIGINT: the run stops after the current step (or eval batch), writes ``checkpoints/last``,
marks the MLflow run KILLED and raises ``TrainingInterrupted`` (``run.py`` exits 143 / 130), whose
message is the command that continues it: ``python run.py resume=true hydra.run.dir=RUN``.

A NaN or Inf loss or gradient stops the run before the step is applied (``NonFiniteError``; exit
code 2), leaving ``checkpoints/last`` and ``best_model`` as they were; with
``trainer.skip_nonfinite=true`` the step is skipped instead and counted (``skipped_steps``).
"""

import contextlib
import logging
from pathlib import Path

import paddle
from omegaconf import DictConfig, OmegaConf, open_dict

from recog.api import build_loss, build_model, load_splits
from recog.config import require_complete
from recog.data import build_train_loader, build_transform
from recog.data.bad_images import FILE_NAME as BAD_IMAGES
from recog.data.bad_images import summarize as summarize_bad_images
from recog.data.loader import dataset_options
from recog.distributed import parallel
from recog.errors import ConfigError, TrainingInterrupted
from recog.evaluation import REPORT_FILES, Evaluator, check_monitor, score
from recog.optim import build_optimizer
from recog.stages.export import export_after_training
from recog.tracking import MlflowTracker
from recog.training.compile import ONEDNN_TRAINING_REFUSED, configure_step  # speed hook (issue 16)
from recog.training.loop import EpochLoop
from recog.training.resume import BEST, Checkpoints, find_run_to_resume, new_state
from recog.training.resume_config import command_line_overrides, resume_config
from recog.training.run_lock import RunLock
from recog.training.step import StepRunner, TrainNet, has_unused_parameters
from recog.training.switches import parse_switch
from recog.utils import atomic
from recog.utils.interrupt import StopRequest
from recog.utils.precision import amp_settings
from recog.utils.runtime import has_gpu, is_main_process, seed_everything, select_device

log = logging.getLogger(__name__)


def run(cfg: DictConfig, run_dir) -> dict[str, float]:
    """Train ``cfg``'s model on ``cfg.dataset``; returns the best eval metrics."""
    require_complete(cfg)
    run_dir = Path(run_dir)
    if cfg.resume:  # the run's own config; what this command may change is checked
        run_dir = find_run_to_resume(cfg, run_dir)
        cfg = resume_config(cfg, run_dir, command_line_overrides())
    monitor = check_monitor(cfg)
    amp = amp_settings(cfg.trainer)  # fails before any work when mixed precision cannot run here
    if parse_switch(cfg.trainer.onednn, "trainer.onednn") == "true":
        raise ConfigError(ONEDNN_TRAINING_REFUSED)
    device_name = getattr(cfg.trainer.device, "value", cfg.trainer.device)
    if cfg.trainer.sync_bn and parallel.launched_world_size() > 1 and (device_name == "cpu" or not has_gpu()):
        raise ConfigError(
            "trainer.sync_bn=true needs GPUs: Paddle has no CPU kernel for SyncBatchNorm; "
            "drop it on CPU (trainer.freeze_bn=true avoids per-process batch statistics)"
        )
    select_device(cfg.trainer.device, ["trainer.sync_bn=true"] if cfg.trainer.sync_bn else [])
    rank, world = parallel.init_distributed()
    run_dir.mkdir(parents=True, exist_ok=True)  # loader workers may record bad images there from the start
    with RunLock(run_dir) if rank == 0 else contextlib.nullcontext():  # one training per run dir
        best = _train(cfg, run_dir, rank, world, amp)
    log.info("best model: %s (%s %.4f)", run_dir / BEST, monitor, score(best, monitor))
    return best


def _train(cfg: DictConfig, run_dir: Path, rank: int, world: int, amp) -> dict[str, float]:
    seed_everything(cfg.seed)
    splits = load_splits(cfg)
    class_num = cfg.head.class_num if cfg.head is not None and cfg.head.class_num else splits.num_train_classes
    cfg = _with_class_num(cfg, class_num)  # the saved config rebuilds the same model
    model = build_model(cfg, class_num=class_num)
    loss_fn = build_loss(cfg, class_num=class_num, embedding_size=model.embedding_size)
    data = cfg.data
    transform = build_transform(
        data.image_size, data.mean, data.std, train=True, hflip=splits.mirror_invariant, augment=data.get("augment")
    )
    options = dataset_options(data, run_dir)
    loader = build_train_loader(
        splits.train,
        splits.train_labels_contiguous(),
        transform,
        data.batch_size,
        data.samples_per_class,
        data.num_workers,
        cfg.seed,
        rank=rank,
        world_size=world,
        options=options,
        steps_per_epoch=cfg.trainer.steps_per_epoch or None,
    )
    steps_per_epoch = len(loader)
    if cfg.trainer.sync_bn and world > 1:
        model = paddle.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # Some losses learn too (CenterLoss's centres): they are optimised and checkpointed with the model.
    optimizer, schedule = build_optimizer(cfg, model.parameters() + loss_fn.parameters(), steps_per_epoch)
    if amp is not None and amp.level == "O2":  # float16/bfloat16 weights, float32 master copies
        model, optimizer = paddle.amp.decorate(
            models=model, optimizers=optimizer, level="O2", dtype=amp.dtype, save_dtype="float32"
        )
    net = TrainNet(model, loss_fn)
    if world > 1:  # broadcasts rank 0's weights; gradients are averaged over the ranks
        net = paddle.DataParallel(net, find_unused_parameters=has_unused_parameters(model, loss_fn))
        paddle.seed(cfg.seed + rank)  # same weights everywhere, but each rank its own dropout masks
    runner = StepRunner(net, optimizer, schedule, amp, skip_nonfinite=cfg.trainer.skip_nonfinite)
    step_mode = configure_step(runner, cfg.trainer, world, amp is not None)  # speed hook (issue 16)
    evaluator = Evaluator(splits, cfg.data, cfg.eval, amp=amp, options=options, postprocess=cfg.postprocess)
    checkpoints = Checkpoints(run_dir, model, loss_fn, cfg, runner, world)
    state = new_state()
    if cfg.resume:
        state = checkpoints.restore(rank, steps_per_epoch)
        log.info(
            "resuming %s at epoch %d, step %d of %d%s",
            run_dir,
            state["epoch"] + 1,
            state["step_in_epoch"],
            steps_per_epoch,
            " (with the eval it was stopped in)" if state.get("eval_pending") else "",
        )

    tracker = MlflowTracker(cfg, stage="train", run_id=state["mlflow_run_id"])
    state["mlflow_run_id"] = tracker.run_id
    tracker.set_tag("recog.world_size", str(world))
    log.info(
        "%s: %d train images in %d classes, %d steps per epoch%s, %s step; %s",
        model.__class__.__name__,
        len(splits.train),
        splits.num_train_classes,
        steps_per_epoch,
        f" on each of {world} processes (batch {data.batch_size} per process)" if world > 1 else "",
        step_mode.describe(),
        tracker.describe(),
    )  # speed hook (issue 16): step_mode
    try:
        with StopRequest() as stop:
            runner.stop = stop
            state = EpochLoop(runner, loader, steps_per_epoch, cfg.trainer, tracker).fit(state, evaluator, checkpoints)
        if state["best"] is not None:
            tracker.log_artifact(run_dir / BEST)
            tracker.log_artifact(run_dir / "metrics.json")
            for name in REPORT_FILES:  # a picture that could not be written was a warning
                if (run_dir / name).is_file():
                    tracker.log_artifact(run_dir / name)
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
        export_after_training(cfg, run_dir, tracker)  # <run>/export + the run's MLflow Model (export.after_train)
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
    log.info("%s", tracker.describe())
    return state["best"] or {}


def _with_class_num(cfg: DictConfig, class_num: int) -> DictConfig:
    """A copy with ``head.class_num`` filled in, so a saved config rebuilds the same model."""
    cfg = cfg.copy()
    if cfg.head is not None and cfg.head.class_num is None:
        with open_dict(cfg):
            cfg.head.class_num = class_num
    return cfg
