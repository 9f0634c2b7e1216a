"""The training loop (``Trainer``): one host read-back per step, the losses' label checks on the first
step only, host batches from the loader, a stop request honoured after the step it arrived in (and
after training: the message, the lock released, the MLflow status), the eval's stop and resume,
the best model by trainer.monitor, and callbacks added from outside the package."""

import json
import signal
import threading

import paddle
import pytest
from image_lists import write_image_lists
from tiny import TINY_MODEL

import recog
from recog.api import build_loss, build_model, build_optimizer, load_splits
from recog.data import build_train_loader, build_transform, set_loader_epoch
from recog.errors import ConfigError, TrainingInterrupted
from recog.stages import train
from recog.tracking import MlflowTracker
from recog.training.callbacks import Callback, SaveCheckpoint, StopOnSignal
from recog.training.resume import Checkpoints, new_state
from recog.training.step import StepRunner, TrainNet
from recog.training.trainer import Trainer
from recog.utils.interrupt import StopRequest
from recog.utils.runtime import python_command

STEPS = 4
READ_BACKS = ("numpy", "item", "tolist", "__float__", "__int__", "__bool__", "__index__", "__array__")


@pytest.fixture(scope="module")
def lists(tmp_path_factory):
    return write_image_lists(tmp_path_factory.mktemp("sync_lists"), (("train", 40), ("query", 10)))


def _cfg(lists, tmp_path, *extra):
    return recog.compose(
        [
            *TINY_MODEL,
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


class _Recorder(Callback):
    """Records every hook call: ``(hook, copy of the state)``; the eval metrics and the step logs too."""

    def __init__(self):
        self.calls, self.logged, self.metrics, self.errors = [], [], [], []

    def _record(self, hook, state):
        self.calls.append((hook, json.loads(json.dumps(state))))

    def on_fit_start(self, trainer, state):
        self._record("on_fit_start", state)

    def on_train_step_end(self, trainer, state, logged):
        self._record("on_train_step_end", state)
        self.logged.append(logged)

    def on_eval_end(self, trainer, state, metrics):
        self._record("on_eval_end", state)
        self.metrics.append(metrics)

    def on_epoch_end(self, trainer, state):
        self._record("on_epoch_end", state)

    def on_stop(self, trainer, state):
        self._record("on_stop", state)

    def on_fit_end(self, trainer, state):
        self._record("on_fit_end", state)
        self.files_at_fit_end = sorted(p.name for p in trainer.run_dir.iterdir())

    def on_exception(self, trainer, state, error):
        self._record("on_exception", state)
        self.errors.append(error)


def _trainer(cfg, tmp_path, model, runner, loader, tracker, callbacks=(), stop=None):
    """A Trainer of these parts (no evaluator: these tests stay inside an epoch)."""
    run_dir = tmp_path / "run"
    checkpoints = Checkpoints(run_dir, model, runner.net.loss_fn, cfg, runner, 1)
    evaluator = type("NoEval", (), {})()
    return Trainer(cfg, run_dir, model, runner, loader, STEPS, evaluator, checkpoints, tracker, callbacks, stop)


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
    state = new_state()
    _trainer(cfg, tmp_path, model, runner, loader, tracker).train_epoch(state)
    monkeypatch.undo()

    assert state["step"] == state["step_in_epoch"] == STEPS
    callers = [c for c, _ in calls]
    flags = "recog.distributed.parallel.max_across_ranks"
    assert callers.count(flags) == STEPS  # the one deliberate sync of each step
    assert callers.count("recog.training.trainer.train_epoch") == STEPS  # the labels' host copy for check_batch
    assert all(on_cpu for c, on_cpu in calls if c == "recog.training.trainer.train_epoch")
    assert callers.count("recog.distributed.parallel.mean_across_ranks") == 1  # the last step is logged
    from_losses = [i for i, c in enumerate(callers) if c.startswith("recog.losses.")]
    assert from_losses and max(from_losses) < callers.index(flags)  # the P x K checks ran, in step 1 only
    assert set(callers) == {
        flags,
        "recog.training.trainer.train_epoch",
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
    runner = StepRunner(TrainNet(model, loss_fn), optimizer, schedule)
    real_forward, calls = TrainNet.forward, [0]

    def forward(self, images, labels):
        calls[0] += 1
        if calls[0] == 2:
            stop.signum = signal.SIGTERM
        return real_forward(self, images, labels)

    monkeypatch.setattr(TrainNet, "forward", forward)
    recorder = _Recorder()
    callbacks = [recorder, SaveCheckpoint(), StopOnSignal()]
    trainer = _trainer(cfg, tmp_path, model, runner, loader, MlflowTracker(cfg, stage="train"), callbacks, stop)
    state = new_state()
    with pytest.raises(TrainingInterrupted, match="stopped by SIGTERM at epoch 1, step 2 ") as stopped:
        trainer.train_epoch(state)
    assert state["step"] == 2 and calls[0] == 2 and runner.stop_agreed and stopped.value.exit_code == 143
    assert [h for h, _ in recorder.calls] == ["on_train_step_end", "on_train_step_end", "on_stop"]
    saved = json.loads((tmp_path / "run" / "checkpoints" / "last" / "state.json").read_text())
    assert saved["step"] == saved["step_in_epoch"] == 2 and saved["finished"] is False


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
def test_a_signal_during_the_eval_stops_it_checkpoints_and_resume_runs_that_eval(
    tmp_path, lists, monkeypatch, sigint_default
):
    """Ctrl-C during an eval stops it after the current batch (not after the whole eval)."""
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
    assert "the eval after epoch 1" in message
    assert f"{python_command()} run.py resume=true hydra.run.dir={run_dir}" in message
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
    """trainer.steps_per_epoch with persistent loader workers: epoch 2 starts where the workers are."""
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
    state = json.loads((tmp_path / "run" / "checkpoints" / "last" / "state.json").read_text())
    assert state["step"] == 6 and state["finished"] is True and best["epoch"] == 2


# ---- callbacks ------------------------------------------------------------------------------------


def test_a_callback_from_outside_the_package_is_called_at_the_fixed_points(tmp_path, lists):
    recorder = _Recorder()
    cfg = _cfg(lists, tmp_path, "trainer.epochs=2", "trainer.steps_per_epoch=2", "trainer.log_every=1")
    best = train.run(cfg, tmp_path / "run", callbacks=[recorder])

    hooks = [hook for hook, _ in recorder.calls]
    epoch = ["on_train_step_end", "on_train_step_end", "on_eval_end", "on_epoch_end"]
    assert hooks == ["on_fit_start", *epoch, *epoch, "on_fit_end"]
    states = dict(recorder.calls[:5])  # the first epoch's, by hook
    assert states["on_fit_start"]["step"] == 0 and states["on_train_step_end"]["step"] == 2
    first_eval = states["on_eval_end"]
    assert first_eval["epoch"] == 1 and first_eval["step"] == 2
    assert first_eval["best"]["epoch"] == 1  # the built-in KeepBestModel ran first
    assert all(set(logged) >= {"loss", "lr", "images_per_sec"} for logged in recorder.logged)  # log_every=1
    assert recorder.metrics[-1]["recall_at_1"] == best["recall_at_1"] or best["epoch"] == 1
    assert recorder.calls[-1][1]["best"] == best
    assert {"best_model", "checkpoints", "config.yaml", "metrics.json"} <= set(recorder.files_at_fit_end)
    assert not recorder.errors


def test_a_callback_registered_in_the_stage_list_runs_and_sees_the_errors(tmp_path, lists, monkeypatch):
    """One class plus one entry in ``train.CALLBACKS``: built for every run, told of an error before it
    propagates; the run dir's lock is released."""

    class Failing(Callback):
        def on_eval_end(self, trainer, state, metrics):
            raise RuntimeError("a callback failed")

    recorders = []

    class Registered(_Recorder):
        def __init__(self):
            super().__init__()
            recorders.append(self)

    monkeypatch.setattr(train, "CALLBACKS", (*train.CALLBACKS, Failing, Registered))
    with pytest.raises(RuntimeError, match="a callback failed"):
        train.run(_cfg(lists, tmp_path, "trainer.epochs=1", "trainer.steps_per_epoch=1"), tmp_path / "run")
    (recorder,) = recorders
    assert [hook for hook, _ in recorder.calls] == ["on_fit_start", "on_train_step_end", "on_exception"]
    assert str(recorder.errors[0]) == "a callback failed"
    assert not (tmp_path / "run" / ".recog.lock").exists()


# ---- a stop signal after training ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """One MLflow store for the module's runs: ``(override, client)``."""
    from mlflow.tracking import MlflowClient
    from mlflow_stores import new_store

    uri = new_store(tmp_path_factory.mktemp("mlflow"))  # migrated once per test process
    return f"mlflow.tracking_uri={uri}", MlflowClient(uri)


def _tracked(lists, tmp_path, tracking, *extra):
    return _cfg(
        lists,
        tmp_path,
        "trainer.epochs=1",
        "trainer.steps_per_epoch=2",
        "mlflow.enabled=true",
        tracking[0],
        *extra,
    )


def _status(run_dir, client) -> str:
    state = json.loads((run_dir / "checkpoints" / "last" / "state.json").read_text())
    return client.get_run(state["mlflow_run_id"]).info.status


@pytest.mark.slow
def test_a_signal_during_the_final_logging_stops_there_and_resume_finishes_the_run(
    tmp_path, lists, tracking, monkeypatch
):
    import os

    from recog.training.callbacks import MlflowLogging

    real = MlflowLogging.on_fit_end

    def signalled(self, trainer, state):
        os.kill(os.getpid(), signal.SIGTERM)
        real(self, trainer, state)

    monkeypatch.setattr(MlflowLogging, "on_fit_end", signalled)
    recorder, run_dir = _Recorder(), tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as stopped:
        train.run(_tracked(lists, tmp_path, tracking), run_dir, callbacks=[recorder])
    message = str(stopped.value)
    assert stopped.value.exit_code == 143 and not stopped.value.complete
    assert message.startswith("stopped by SIGTERM after training: training is complete")
    assert message.endswith(f"finish them with: {python_command()} run.py resume=true hydra.run.dir={run_dir}")
    assert [hook for hook, _ in recorder.calls][-2:] == ["on_epoch_end", "on_exception"]  # its on_fit_end: skipped
    assert not (run_dir / ".recog.lock").exists() and _status(run_dir, tracking[1]) == "KILLED"

    monkeypatch.setattr(MlflowLogging, "on_fit_end", real)
    best = train.run(_tracked(lists, tmp_path, tracking, "resume=true"), run_dir)
    assert best["epoch"] == 1 and _status(run_dir, tracking[1]) == "FINISHED"
    state = json.loads((run_dir / "checkpoints" / "last" / "state.json").read_text())
    artifacts = {a.path for a in tracking[1].list_artifacts(state["mlflow_run_id"])}
    assert {"best_model", "metrics.json", "config.yaml"} <= artifacts and state["step"] == 2  # nothing retrained


@pytest.mark.slow
def test_a_signal_during_the_export_ends_the_complete_run_with_a_message(tmp_path, lists, tracking, monkeypatch):
    import os

    from recog.stages import export

    real = export.export_after_training

    def signalled(cfg, run_dir, tracker):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(cfg, run_dir, tracker)

    monkeypatch.setattr(export, "export_after_training", signalled)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as stopped:
        train.run(_tracked(lists, tmp_path, tracking), run_dir)
    assert stopped.value.exit_code == 143 and stopped.value.complete
    assert str(stopped.value).startswith("SIGTERM received after the run had completed: training is complete")
    assert not (run_dir / ".recog.lock").exists() and _status(run_dir, tracking[1]) == "FINISHED"
    assert (run_dir / "config.yaml").is_file()
