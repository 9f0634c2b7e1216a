"""A training run from config: its checked config, run dir and processes (``prepare_training``),
the optimizer and schedule (``build_optimizer``) and the whole ``Trainer`` (``build_trainer``):
model and loss, loader, SyncBN, mixed precision, data parallel, the step and its strategy, the
evaluator, the checkpoints (restored on resume) and the MLflow run."""

import logging
from collections.abc import Sequence
from pathlib import Path

import paddle
from omegaconf import DictConfig, open_dict

from recog.builders.data import build_evaluator, build_train_loader, load_splits
from recog.builders.model import build_loss, build_model
from recog.config import require_complete
from recog.config.build import build_component
from recog.distributed import parallel
from recog.errors import ConfigError
from recog.evaluation import check_monitor
from recog.tracking import MlflowTracker
from recog.training.resume import Checkpoints, check_epochs, find_run_to_resume, new_state
from recog.training.resume_config import command_line_overrides, resume_config
from recog.training.step import StepRunner, TrainNet, has_unused_parameters
from recog.training.strategy import configure_step
from recog.training.trainer import Trainer
from recog.utils.precision import Amp, amp_settings
from recog.utils.runtime import has_gpu, seed_everything, select_device

log = logging.getLogger(__name__)


def prepare_training(cfg: DictConfig, run_dir) -> tuple[DictConfig, Path, int, int, Amp | None]:
    """``(cfg, run_dir, rank, world, amp)`` of the training ``cfg`` asks for, checked before any work:
    with ``cfg.resume`` the run to continue and its saved config (what this command may change is
    checked); the monitored metric, mixed precision and SyncBN possible here; the device selected
    and the process group joined (data parallel); the run dir created."""
    require_complete(cfg)
    run_dir = Path(run_dir)
    if cfg.resume:
        run_dir = find_run_to_resume(cfg, run_dir)
        cfg = resume_config(cfg, run_dir, command_line_overrides())
        check_epochs(run_dir, int(cfg.trainer.epochs))
    check_monitor(cfg)
    amp = amp_settings(cfg.trainer)
    device = getattr(cfg.trainer.device, "value", cfg.trainer.device)
    if cfg.trainer.sync_bn and parallel.launched_world_size() > 1 and (device == "cpu" or not has_gpu()):
        raise ConfigError(
            "trainer.sync_bn=true needs GPUs: Paddle has no CPU kernel for SyncBatchNorm; "
            "drop it on CPU (trainer.freeze_bn=true avoids per-process batch statistics)"
        )
    select_device(cfg.trainer.device, ["trainer.sync_bn=true"] if cfg.trainer.sync_bn else [])
    rank, world = parallel.init_distributed()
    run_dir.mkdir(parents=True, exist_ok=True)  # loader workers may record bad images there from the start
    return cfg, run_dir, rank, world, amp


def build_optimizer(cfg: DictConfig, parameters, steps_per_epoch: int):
    """Returns ``(optimizer, schedule)`` from ``cfg.optimizer``, ``cfg.scheduler`` and ``cfg.trainer``
    (``grad_clip``: a global-norm clip); the schedule is stepped every iteration."""
    schedule = build_component(
        "scheduler", cfg.scheduler, base_lr=cfg.optimizer.lr, epochs=cfg.trainer.epochs, steps_per_epoch=steps_per_epoch
    )
    clip = cfg.trainer.grad_clip
    grad_clip = paddle.nn.ClipGradByGlobalNorm(clip) if clip else None
    optimizer = build_component(
        "optimizer", cfg.optimizer, parameters=parameters, learning_rate=schedule, grad_clip=grad_clip
    )
    return optimizer, schedule


def build_trainer(
    cfg: DictConfig, run_dir: Path, rank: int, world: int, amp: Amp | None, stop, callbacks: Sequence = ()
) -> tuple[Trainer, dict]:
    """``(trainer, state)`` for ``cfg`` in ``run_dir`` on this rank of ``world``: ``state`` is a new
    run's, or with ``cfg.resume`` the one ``checkpoints/last`` holds (weights, optimizer and RNG
    restored). The MLflow run is created (or, resumed, continued) last, once nothing else can fail."""
    seed_everything(cfg.seed)
    splits = load_splits(cfg)
    class_num = cfg.head.class_num if cfg.head is not None and cfg.head.class_num else splits.num_train_classes
    cfg = _with_class_num(cfg, class_num)  # the saved config rebuilds the same model
    model = build_model(cfg, class_num=class_num)
    loss_fn = build_loss(cfg, class_num=class_num, embedding_size=model.embedding_size)
    loader = build_train_loader(cfg, splits, run_dir, rank, world)
    steps = len(loader)
    if cfg.trainer.sync_bn and world > 1:
        model = paddle.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # Some losses learn too (CenterLoss's centres): they are optimised and checkpointed with the model.
    optimizer, schedule = build_optimizer(cfg, model.parameters() + loss_fn.parameters(), steps)
    if amp is not None and amp.level == "O2":  # float16/bfloat16 weights, float32 master copies
        model, optimizer = paddle.amp.decorate(
            models=model, optimizers=optimizer, level="O2", dtype=amp.dtype, save_dtype="float32"
        )
    net = TrainNet(model, loss_fn)
    if world > 1:  # broadcasts rank 0's weights; gradients are averaged over the ranks
        net = paddle.DataParallel(net, find_unused_parameters=has_unused_parameters(model, loss_fn))
        paddle.seed(cfg.seed + rank)  # same weights everywhere, but each rank its own dropout masks
    runner = StepRunner(net, optimizer, schedule, amp, skip_nonfinite=cfg.trainer.skip_nonfinite)
    strategy = configure_step(runner, cfg.trainer, world, amp is not None)
    evaluator = build_evaluator(cfg, splits, run_dir, amp)
    checkpoints = Checkpoints(run_dir, model, loss_fn, cfg, runner, world)
    state = new_state()
    if cfg.resume:
        state = checkpoints.restore(rank, steps)
        log.info(
            "resuming %s at epoch %d, step %d of %d%s",
            run_dir,
            state["epoch"] + 1,
            state["step_in_epoch"],
            steps,
            " (with the eval it was stopped in)" if state.get("eval_pending") else "",
        )
    tracker = MlflowTracker(cfg, stage="train", run_id=state["mlflow_run_id"])
    state["mlflow_run_id"] = tracker.run_id
    log.info(
        "%s: %d train images in %d classes, %d steps per epoch%s, %s; %s",
        model.__class__.__name__,
        len(splits.train),
        splits.num_train_classes,
        steps,
        f" on each of {world} processes (batch {cfg.data.batch_size} per process)" if world > 1 else "",
        strategy.describe(),
        tracker.describe(),
    )
    trainer = Trainer(cfg, run_dir, model, runner, loader, steps, evaluator, checkpoints, tracker, callbacks, stop)
    return trainer, state


def _with_class_num(cfg: DictConfig, class_num: int) -> DictConfig:
    """A copy with ``head.class_num`` filled in, so a saved config rebuilds the same model."""
    cfg = cfg.copy()
    if cfg.head is not None and cfg.head.class_num is None:
        with open_dict(cfg):
            cfg.head.class_num = class_num
    return cfg
