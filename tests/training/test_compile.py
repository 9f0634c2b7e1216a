"""trainer.compile / trainer.onednn: each mode trains the same function as dygraph (same weights after
several steps, every trainable tensor gets a gradient), a net to_static cannot convert trains in
dygraph after one warning naming the layer, and the switches resolve as documented."""

import logging
import os
import signal
import subprocess
import sys

import numpy as np
import paddle
import pytest
from same_training import assert_same_training

import recog
from recog.api import build_loss, build_model
from recog.errors import ConfigError
from recog.training.compile import CompiledForward, StepMode, configure_step, resolve_step_mode
from recog.training.step import StepRunner, TrainNet

STEPS = 4
BATCH, SIZE = 8, 32


def _cfg(*extra):
    return recog.compose(
        [
            "backbone.scale=0.25",
            f"data.image_size={SIZE}",
            "neck.embedding_size=16",
            "loss=ce_triplet",
            "mlflow.enabled=false",
            *extra,
        ]
    )


def _batches():
    rng = np.random.default_rng(0)
    labels = paddle.to_tensor(np.repeat(np.arange(BATCH // 4), 4).astype("int64"))
    return [
        (paddle.to_tensor(rng.standard_normal((BATCH, 3, SIZE, SIZE)).astype("float32")), labels) for _ in range(STEPS)
    ]


class _RecordingMomentum(paddle.optimizer.Momentum):
    """Momentum that keeps, at every step, which trainable tensors have a non-zero gradient."""

    def __init__(self, params, **kwargs):
        super().__init__(parameters=params, **kwargs)
        self.watched = params
        self.with_gradient = []

    def step(self):
        self.with_gradient.append([p.grad is not None and float(p.grad.abs().sum()) > 0 for p in self.watched])
        super().step()


def _train(cfg, mode: StepMode, batches, extra_layer=None):
    """STEPS steps of StepRunner in ``mode`` from seed 0; returns the trainable tensors, BN statistics,
    the runner and the optimizer."""
    paddle.seed(0)
    model = build_model(cfg, class_num=5)
    loss_fn = build_loss(cfg, class_num=5, embedding_size=model.embedding_size)
    if extra_layer is not None:
        model.neck = extra_layer(model.neck)
    model.train()
    net = TrainNet(model, loss_fn)
    params = [p for p in net.parameters() if not p.stop_gradient]
    optimizer = _RecordingMomentum(params, learning_rate=0.002, momentum=0.9, weight_decay=5e-4)
    schedule = paddle.optimizer.lr.StepDecay(0.002, step_size=1000)
    runner = StepRunner(net, optimizer, schedule)
    if mode.compile:
        runner.forward = CompiledForward(net, mode)
    for i, (images, labels) in enumerate(batches):
        paddle.seed(100 + i)  # the same dropout masks in every mode
        runner(images, labels, step=i + 1)
    # BatchNorm running statistics: non-trainable parameters in Paddle (model.buffers() is empty).
    stats = [v.numpy() for k, v in model.state_dict().items() if k.endswith(("._mean", "._variance"))]
    return [p.numpy() for p in params], stats, runner, optimizer


# oneDNN: without dropout (its programs' dropout masks are not dygraph's; see recog/training/compile.py).
MODES = {
    "compiled": (StepMode(compile=True), ()),
    "compiled+onednn": (StepMode(compile=True, onednn=True), ("backbone.dropout_prob=0.0",)),
}


@pytest.mark.slow
def test_compiled_step_trains_the_same_weights_as_dygraph():
    _check_mode("compiled")


@pytest.mark.slow
def test_onednn_step_trains_the_same_weights_as_dygraph_in_a_fresh_process():
    """In a process where another training program was compiled first, Paddle 3.3.1 fails to run the
    oneDNN program (run_program error, then the dygraph fallback): the mode is checked in a process
    of its own, as a training run has it."""
    if os.environ.get("RECOG_TEST_CHILD") == "onednn":
        _check_mode("compiled+onednn")
        return
    test = f"{__file__}::test_onednn_step_trains_the_same_weights_as_dygraph_in_a_fresh_process"
    # Paddle 3.3.1 sometimes kills a process that builds oneDNN training programs with SIGSEGV (the
    # README's oneDNN notes; why the mode is opt-in): such a death is retried, up to 3 processes in
    # all. Whatever else ends a child (a wrong weight, an error) fails the test at once.
    for _ in range(3):
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", test],
            env={**os.environ, "RECOG_TEST_CHILD": "onednn"},
            capture_output=True,
            text=True,
            timeout=900,
        )
        if result.returncode != -signal.SIGSEGV:
            break
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "1 passed" in result.stdout


def _check_mode(name):
    mode, overrides = MODES[name]
    dygraph_lcnet = _train(_cfg(*overrides), StepMode(), _batches())
    weights, stats, runner, optimizer = _train(_cfg(*overrides), mode, _batches())
    assert runner.forward.active and runner.forward.compiled_calls == STEPS - 1  # step 1: dygraph (label checks)
    for step_flags in optimizer.with_gradient:
        assert all(step_flags), f"{step_flags.count(False)} trainable tensors without a gradient"
    ref_weights, ref_stats, _, _ = dygraph_lcnet
    assert len(weights) == len(ref_weights) > 50
    assert_same_training(weights, ref_weights, _initial_weights(_cfg(*overrides)))
    assert len(stats) == len(ref_stats) > 20
    if name == "compiled+onednn":
        # The oneDNN backbone program's BatchNorm running statistics lag dygraph's (e.g. 0.011 vs 0.038
        # after 4 steps): why the train stage refuses trainer.onednn=true (test below). They differ:
        assert any(not np.allclose(ours, ref, rtol=1e-3, atol=1e-4) for ours, ref in zip(stats, ref_stats))
        return
    for ours, ref in zip(stats, ref_stats):  # BatchNorm running statistics follow too
        np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-4)


def _initial_weights(cfg=None):
    paddle.seed(0)
    cfg = cfg if cfg is not None else _cfg()
    model = build_model(cfg, class_num=5)
    loss_fn = build_loss(cfg, class_num=5, embedding_size=model.embedding_size)
    return [p.numpy() for p in TrainNet(model, loss_fn).parameters() if not p.stop_gradient]


@pytest.mark.slow
def test_compiled_resnet_vd_trains_the_same_weights_as_dygraph():
    cfg = recog.compose(
        [
            "backbone=resnet_vd",
            "backbone.depth=18",
            f"data.image_size={SIZE}",
            "neck.embedding_size=16",
            "loss=ce_triplet",
            "mlflow.enabled=false",
        ]
    )
    batches = _batches()[:3]
    ref, ref_stats, _, _ = _train(cfg, StepMode(), batches)
    ours, stats, runner, optimizer = _train(cfg, StepMode(compile=True), batches)
    assert runner.forward.compiled_calls == 2 and all(all(flags) for flags in optimizer.with_gradient)
    assert_same_training(ours, ref, _initial_weights(cfg))
    assert len(stats) == len(ref_stats) > 20
    for a, b in zip(stats, ref_stats):  # BatchNorm running statistics follow too
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


class _SecondOrderNeck(paddle.nn.Layer):
    """The neck plus a gradient-penalty term computed with paddle.grad(create_graph=True): fine in
    dygraph, a construct paddle.jit.to_static (SOT) cannot convert in Paddle 3.3."""

    def __init__(self, neck):
        super().__init__()
        self.inner = neck

    def forward(self, x):
        y = self.inner(x)
        (grad,) = paddle.grad(y.square().sum(), [self.inner.fc.weight], create_graph=True)
        return y + 1e-6 * grad.square().sum()


@pytest.mark.slow
def test_unconvertible_net_falls_back_to_dygraph_with_one_warning_naming_the_layer(caplog):
    # Not cut shorter: with PP-LCNet cut after blocks3 (2 s quicker) Paddle 3.3.1 died with SIGSEGV while
    # probing the layers, in a process that had run other test files first.
    cfg = _cfg()
    batches = _batches()[:3]
    ref, ref_stats, _, _ = _train(cfg, StepMode(), batches, extra_layer=_SecondOrderNeck)
    with caplog.at_level(logging.WARNING, logger="recog.training.compile"):
        ours, stats, runner, _ = _train(cfg, StepMode(compile=True), batches, extra_layer=_SecondOrderNeck)
    warnings = [r.getMessage() for r in caplog.records if "cannot be converted" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "model.neck (_SecondOrderNeck)" in warnings[0]
    assert not runner.forward.active and runner.forward.compiled_calls == 0
    assert len(ours) == len(ref) > 20
    for a, b in zip(ours, ref):  # the failed attempt left no trace: dygraph's weights exactly
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert len(stats) == len(ref_stats) > 20
    for a, b in zip(stats, ref_stats):  # nor in the BatchNorm running statistics (non-trainable parameters)
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_the_train_stage_refuses_onednn_training(tmp_path):
    from recog.stages import train

    cfg = recog.compose(["trainer.onednn=true", f"paths.output_root={tmp_path}"])
    with pytest.raises(ConfigError, match="trainer.onednn=true is not available for training.*BatchNorm"):
        train.run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_switches_resolve_as_documented():
    trainer = _cfg().trainer
    assert resolve_step_mode(trainer, "cpu") == StepMode()  # auto: dygraph (measured as fast)
    assert resolve_step_mode(trainer, "gpu", amp=True) == StepMode()
    compiled = _cfg("trainer.compile=true").trainer
    assert resolve_step_mode(compiled, "cpu") == StepMode(compile=True)  # native kernels
    assert resolve_step_mode(compiled, "cpu", world_size=2) == StepMode()  # data parallel: dygraph
    assert resolve_step_mode(compiled, "gpu", amp=True) == StepMode(compile=True, channels_last=True)
    assert resolve_step_mode(_cfg("trainer.compile=false").trainer, "cpu") == StepMode()
    assert resolve_step_mode(_cfg("trainer.compile=true", "trainer.onednn=true").trainer, "cpu") == StepMode(
        compile=True, onednn=True
    )
    with pytest.raises(ConfigError, match="trainer.onednn=true needs trainer.compile"):
        resolve_step_mode(_cfg("trainer.compile=false", "trainer.onednn=true").trainer, "cpu")
    with pytest.raises(ConfigError, match="oneDNN CPU kernels"):
        resolve_step_mode(_cfg("trainer.compile=true", "trainer.onednn=true").trainer, "gpu")
    with pytest.raises(ConfigError, match="channels_last=true is for a GPU"):
        resolve_step_mode(_cfg("trainer.channels_last=true").trainer, "cpu")
    with pytest.raises(ConfigError, match="trainer.compile='fast'"):
        resolve_step_mode(_cfg("trainer.compile=fast").trainer, "cpu")


def test_configure_step_sets_the_runner_from_the_config():
    cfg = _cfg("trainer.compile=true", "trainer.fused_finite_check=false")
    net = TrainNet(build_model(cfg, class_num=5), build_loss(cfg, class_num=5, embedding_size=16))
    runner = StepRunner(net, None, None)  # configure_step reads neither optimizer nor schedule
    mode = configure_step(runner, cfg.trainer)
    assert mode.compile and isinstance(runner.forward, CompiledForward) and runner.forward.net is net
    assert runner.fused_finite_check is False
    configure_step(runner, _cfg("trainer.compile=false").trainer)
    assert runner.forward is net and runner.fused_finite_check is True
