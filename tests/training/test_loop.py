"""The train loop's host synchronisation: one read-back per step, the losses' label checks on the first
step only, host batches from the loader, and a stop request honoured after the step it arrived in."""

import signal
import threading

import paddle
import pytest
from image_lists import write_image_lists

import recog
from recog.api import build_loss, build_model, load_splits
from recog.data import build_train_loader, build_transform, set_loader_epoch
from recog.errors import ConfigError
from recog.optim import build_optimizer
from recog.stages import train
from recog.tracking import MlflowTracker
from recog.training.loop import EpochLoop
from recog.training.step import StepRunner, TrainNet
from recog.utils.interrupt import StopRequest

STEPS = 4
READ_BACKS = ("numpy", "item", "tolist", "__float__", "__int__", "__bool__", "__index__", "__array__")


@pytest.fixture(scope="module")
def lists(tmp_path_factory):
    return write_image_lists(tmp_path_factory.mktemp("sync_lists"), (("train", 40), ("query", 10)))


def _cfg(lists, tmp_path, *extra):
    return recog.compose(
        [
            "backbone.scale=0.25",
            "data.image_size=16",
            "data.num_workers=0",
            "neck.embedding_size=32",
            "data.batch_size=8",
            "data.samples_per_class=4",
            "loss=ce_triplet",
            "trainer.log_every=100",
            "mlflow.enabled=false",
            "export.after_train=false",  # no export: not the subject here
            *lists,
            f"paths.output_root={tmp_path}",
            *extra,
        ]
    )


def _parts(cfg):
    splits = load_splits(cfg)
    model = build_model(cfg, class_num=splits.num_train_classes)
    loss_fn = build_loss(cfg, class_num=splits.num_train_classes, embedding_size=model.embedding_size)
    transform = build_transform(cfg.data.image_size, cfg.data.mean, cfg.data.std, train=True, hflip=True)
    loader = build_train_loader(
        splits.train,
        splits.train_labels_contiguous(),
        transform,
        cfg.data.batch_size,
        cfg.data.samples_per_class,
        0,
        cfg.seed,
    )
    optimizer, schedule = build_optimizer(cfg, model.parameters() + loss_fn.parameters(), len(loader))
    set_loader_epoch(loader, 0)
    return model, loss_fn, loader, optimizer, schedule


def _record_read_backs(monkeypatch):
    """Every outermost Tensor -> host conversion as the ``module.function`` of recog that asked for it."""
    calls, depth = [], threading.local()

    def caller():
        import sys

        frame = sys._getframe(2)
        while frame is not None:
            module = frame.f_globals.get("__name__", "")
            if module.startswith("recog."):
                return f"{module}.{frame.f_code.co_name}"
            frame = frame.f_back
        return "?"

    for name in READ_BACKS:
        real = getattr(paddle.Tensor, name)

        def wrapper(self, *args, _real=real, **kwargs):
            outer = not getattr(depth, "n", 0)
            if outer:
                calls.append((caller(), self.place.is_cpu_place()))
            depth.n = getattr(depth, "n", 0) + 1
            try:
                return _real(self, *args, **kwargs)
            finally:
                depth.n -= 1

        monkeypatch.setattr(paddle.Tensor, name, wrapper)
    return calls


def test_one_read_back_per_step_and_label_checks_on_the_first_step_only(tmp_path, lists, monkeypatch):
    cfg = _cfg(lists, tmp_path)
    model, loss_fn, loader, optimizer, schedule = _parts(cfg)
    tracker = MlflowTracker(cfg, stage="train")  # disabled: logs nothing
    calls = _record_read_backs(monkeypatch)
    runner = StepRunner(TrainNet(model, loss_fn), optimizer, schedule)
    step = EpochLoop(runner, loader, STEPS, cfg.trainer, tracker).train_epoch(0, 0)
    monkeypatch.undo()

    assert step == STEPS
    callers = [c for c, _ in calls]
    flags = "recog.distributed.parallel.max_across_ranks"
    assert callers.count(flags) == STEPS  # the one deliberate sync of each step
    assert callers.count("recog.training.loop.train_epoch") == STEPS  # the labels' host copy for check_batch
    assert all(on_cpu for c, on_cpu in calls if c == "recog.training.loop.train_epoch")
    assert callers.count("recog.distributed.parallel.mean_across_ranks") == 1  # the last step is logged
    from_losses = [i for i, c in enumerate(callers) if c.startswith("recog.losses.")]
    assert from_losses and max(from_losses) < callers.index(flags)  # the P x K checks ran, in step 1 only
    assert set(callers) == {
        flags,
        "recog.training.loop.train_epoch",
        "recog.distributed.parallel.mean_across_ranks",
        *(callers[i] for i in from_losses),
    }


def test_a_bad_pk_batch_still_fails_clearly_on_the_first_step(tmp_path, lists):
    cfg = _cfg(lists, tmp_path, "data.batch_size=4", "data.samples_per_class=1", "trainer.epochs=1")
    with pytest.raises(ConfigError, match=r"TripletLossV2 needs P x K.*samples_per_class"):
        train.run(cfg, tmp_path / "run")


def test_a_stop_request_ends_the_epoch_after_the_step_it_arrived_in(tmp_path, lists, monkeypatch):
    cfg = _cfg(lists, tmp_path)
    model, loss_fn, loader, optimizer, schedule = _parts(cfg)
    stop = StopRequest()  # not entered: no signal handlers, the test sets it as a signal would
    runner = StepRunner(TrainNet(model, loss_fn), optimizer, schedule, stop=stop)
    real_forward, calls = TrainNet.forward, [0]

    def forward(self, images, labels):
        calls[0] += 1
        if calls[0] == 2:
            stop.signum = signal.SIGTERM
        return real_forward(self, images, labels)

    monkeypatch.setattr(TrainNet, "forward", forward)
    step = EpochLoop(runner, loader, STEPS, cfg.trainer, MlflowTracker(cfg, stage="train")).train_epoch(0, 0)
    assert step == 2 and calls[0] == 2 and runner.stop_agreed


def test_the_loaders_yield_host_tensors(tmp_path, lists):
    _, _, loader, _, _ = _parts(_cfg(lists, tmp_path))
    images, labels = next(iter(loader))
    assert images.place.is_cpu_place() and labels.place.is_cpu_place()
    assert images.shape == [8, 3, 16, 16] and labels.dtype == paddle.int64


def _signal_at_eval_batch(monkeypatch, batch: int, signum=signal.SIGINT):
    """Send ``signum`` to this process while the eval extracts its ``batch``-th batch (from 1), as
    Ctrl-C would; returns the list of batches extracted."""
    import os

    from recog.evaluation import evaluator as module

    real, seen = module.to_device, []

    def to_device(tensor):
        seen.append(1)
        if len(seen) == batch:
            os.kill(os.getpid(), signum)
        return real(tensor)

    monkeypatch.setattr(module, "to_device", to_device)
    return seen


@pytest.mark.slow
def test_a_signal_during_the_eval_stops_it_checkpoints_and_resume_runs_that_eval(tmp_path, lists, monkeypatch):
    """Issue 13 defect 6: Ctrl-C during an eval waited for the whole eval."""
    import json

    from recog.errors import TrainingInterrupted

    cfg = _cfg(
        lists,
        tmp_path,
        "trainer.epochs=2",
        "trainer.steps_per_epoch=2",
        "eval.engine=dygraph",
        "data.eval_batch_size=2",
    )
    run_dir = tmp_path / "run"
    seen = _signal_at_eval_batch(monkeypatch, 1)
    with pytest.raises(TrainingInterrupted) as stopped:
        train.run(cfg, run_dir)
    assert len(seen) == 1  # the eval (5 batches of query) stopped after the batch the signal came in
    assert stopped.value.signum == signal.SIGINT and stopped.value.exit_code == 130
    message = str(stopped.value)
    assert "the eval after epoch 1" in message and f"python run.py resume=true hydra.run.dir={run_dir}" in message
    state = json.loads((run_dir / "checkpoints" / "last" / "state.json").read_text())
    assert state["epoch"] == 1 and state["step"] == 2 and state["eval_pending"] is True and state["finished"] is False
    assert not (run_dir / "best_model").exists()
    monkeypatch.undo()

    best = train.run(_cfg(lists, tmp_path, "trainer.epochs=2", "resume=true"), run_dir)
    state = json.loads((run_dir / "checkpoints" / "last" / "state.json").read_text())
    assert state["finished"] is True and state["step"] == 4 and "eval_pending" not in state
    assert (run_dir / "best_model").is_dir() and best["epoch"] in (1, 2)


@pytest.mark.slow
def test_the_best_model_follows_trainer_monitor(tmp_path, lists, monkeypatch):
    """best_model/ is the epoch with the highest trainer.monitor, not always Recall@1's."""
    from recog.evaluation import Evaluator

    scripted = iter(
        [{"recall_at_1": 0.9, "mAP": 0.1}, {"recall_at_1": 0.2, "mAP": 0.5}, {"recall_at_1": 0.5, "mAP": 0.3}]
    )
    monkeypatch.setattr(Evaluator, "__call__", lambda self, model: dict(next(scripted)))
    monkeypatch.setattr(Evaluator, "save_report", lambda self, directory: [])
    best = train.run(
        _cfg(lists, tmp_path, "trainer.epochs=3", "trainer.steps_per_epoch=1", "trainer.monitor=mAP"), tmp_path / "run"
    )
    assert best == {"recall_at_1": 0.2, "mAP": 0.5, "epoch": 2}
    with pytest.raises(
        ConfigError,
        match=r"trainer.monitor=recall_at_3 is not an eval metric; choose one of "
        r"recall_at_1, recall_at_5, recall_at_10, precision_at_1",
    ):
        train.run(_cfg(lists, tmp_path, "trainer.monitor=recall_at_3"), tmp_path / "other")
    assert recog.compose(["trainer.monitor=mAP"]).sweep.objective == "mAP"  # the sweep follows it by default
    assert recog.compose(["trainer.monitor=mAP", "sweep.objective=mINP"]).sweep.objective == "mINP"


@pytest.mark.slow
def test_short_epochs_with_loader_workers_train_past_the_first_epoch(tmp_path, lists):
    """Issue 13 defect 1: trainer.steps_per_epoch with persistent workers failed at the start of epoch 2."""
    best = train.run(
        _cfg(
            lists,
            tmp_path,
            "trainer.epochs=2",
            "trainer.steps_per_epoch=3",
            "data.num_workers=1",
            "trainer.eval_every=2",
        ),
        tmp_path / "run",
    )
    import json

    state = json.loads((tmp_path / "run" / "checkpoints" / "last" / "state.json").read_text())
    assert state["step"] == 6 and state["finished"] is True and best["epoch"] == 2
