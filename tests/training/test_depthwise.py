"""trainer.depthwise_matmul: depthwise convolutions as a matrix product compute Paddle's conv2d (outputs
and gradients); PP-LCNet's float32 training step computes Paddle's gradients, and float64 training the
same weights; parameters and programs are left alone."""

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest
from same_training import assert_same_training

import recog
from recog.api import build_loss, build_model
from recog.errors import ConfigError
from recog.training.depthwise import (
    MAX_CELLS,
    DepthwiseMatmulConv2D,
    depthwise_matmul,
    eligible,
    resolve_depthwise_matmul,
    use_depthwise_matmul,
)
from recog.training.step import StepRunner, TrainNet
from recog.training.strategy import configure_step


@pytest.mark.parametrize(
    "channels, height, width, kernel, stride, padding, bias",
    [
        (4, 8, 8, 3, 1, 1, False),
        (4, 8, 8, 3, 2, 1, True),
        (6, 4, 4, 5, 1, 2, False),
        (6, 4, 4, 5, 2, 2, True),
        (3, 2, 2, 5, 1, 2, False),  # the kernel larger than the map
        (2, 5, 5, 3, 2, 1, False),  # odd size at stride 2
        (3, 7, 7, 5, 1, 2, True),
        (3, 4, 6, 3, 2, 1, False),  # not square
        (2, 3, 5, 5, 1, 2, True),
        (4, 6, 6, 3, 1, 0, False),  # no padding
        (2, 7, 5, 3, 2, 0, True),
    ],
)
def test_outputs_and_gradients_equal_paddles_depthwise_conv(channels, height, width, kernel, stride, padding, bias):
    rng = np.random.default_rng(channels * height * width + kernel + padding)
    x_value = rng.standard_normal((3, channels, height, width)).astype(np.float32)
    w_value = rng.standard_normal((channels, 1, kernel, kernel)).astype(np.float32)
    b_value = rng.standard_normal(channels).astype(np.float32) if bias else None
    out_h, out_w = ((size + 2 * padding - kernel) // stride + 1 for size in (height, width))
    upstream = paddle.to_tensor(rng.standard_normal((3, channels, out_h, out_w)).astype(np.float32))
    results = []
    for fn in (
        lambda x, w, b: F.conv2d(x, w, b, stride=stride, padding=padding, groups=channels),
        lambda x, w, b: depthwise_matmul(x, w, b, stride, padding),
    ):
        x, w = paddle.to_tensor(x_value, stop_gradient=False), paddle.to_tensor(w_value, stop_gradient=False)
        b = paddle.to_tensor(b_value, stop_gradient=False) if bias else None
        y = fn(x, w, b)
        (y * upstream).sum().backward()
        results.append([y.numpy(), x.grad.numpy(), w.grad.numpy()] + ([b.grad.numpy()] if bias else []))
    for ours, reference in zip(results[1], results[0]):
        assert ours.shape == reference.shape
        np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)


def test_only_plain_depthwise_convolutions_are_routed():
    assert eligible(paddle.nn.Conv2D(8, 8, 3, padding=1, groups=8))
    assert eligible(paddle.nn.Conv2D(8, 8, 5, stride=2, padding=2, groups=8, bias_attr=False))
    assert not eligible(paddle.nn.Conv2D(8, 16, 3, padding=1, groups=8))  # a channel multiplier
    assert not eligible(paddle.nn.Conv2D(8, 8, 3, padding=1))  # dense
    assert not eligible(paddle.nn.Conv2D(8, 8, 3, padding=2, dilation=2, groups=8))
    assert not eligible(paddle.nn.Conv2D(8, 8, 3, padding=1, groups=8, padding_mode="reflect"))
    assert not eligible(paddle.nn.Conv2D(8, 8, 3, padding="SAME", groups=8))


def test_evaluation_large_maps_and_whole_programs_keep_paddles_kernel(monkeypatch):
    """The matrix product runs in dygraph training steps on small maps, also inside trainer.compile's
    SOT programs (the routing check is a graph break there, the product runs in dygraph); evaluation,
    large maps and programs traced whole (exports, the eval predictor) keep Paddle's kernel."""
    layer = paddle.nn.Conv2D(4, 4, 3, padding=1, groups=4)
    assert use_depthwise_matmul(layer) == 1
    calls = []
    import recog.training.depthwise as depthwise

    monkeypatch.setattr(
        depthwise,
        "depthwise_matmul",
        lambda *a: calls.append(a[0].shape) or F.conv2d(a[0], a[1], a[2], stride=a[3], padding=a[4], groups=4),
    )
    layer(paddle.rand([1, 4, 8, 8]))  # 64 x 64 cells: the matrix product
    assert calls == [[1, 4, 8, 8]]
    layer.eval()
    layer(paddle.rand([1, 4, 8, 8]))  # evaluation: Paddle's kernel, as stage=eval and exports compute it
    assert len(calls) == 1
    layer.train()
    side = int(round(MAX_CELLS**0.25)) + 1  # (side^2)^2 > MAX_CELLS: Paddle's kernel
    layer(paddle.rand([1, 4, side, side]))
    assert len(calls) == 1
    compiled_step = paddle.jit.to_static(layer.forward, full_graph=False)  # as trainer.compile builds it
    for _ in range(2):
        compiled_step(paddle.rand([2, 4, 8, 8]))
    assert len(calls) == 3  # at every call, not once while tracing
    static = paddle.jit.to_static(
        layer, input_spec=[paddle.static.InputSpec([None, 4, 8, 8], "float32")], full_graph=True
    )
    static(paddle.rand([2, 4, 8, 8]))
    assert len(calls) == 3  # the program was built with conv2d


class _RecordingMomentum(paddle.optimizer.Momentum):
    """Momentum that keeps each step's gradients (float64 copies, None where a tensor got none), read
    before it applies them."""

    def __init__(self, parameters):
        super().__init__(learning_rate=0.01, momentum=0.9, parameters=parameters, weight_decay=5e-4)
        self.gradients = []

    def step(self):
        grads = [None if p.grad is None else p.grad.numpy().astype("float64") for p in self._parameter_list]
        self.gradients.append(grads)
        super().step()


def _train(depthwise: str, steps: int, dtype: str = "float32"):
    """``steps`` StepRunner steps of PP-LCNet x0.5 at 64 px (maps down to 2 x 2, where 13 depthwise
    convolutions take the matrix product) with CE + batch-hard triplet, from seed 0, in ``dtype``:
    (initial state, final state, per-step losses, per-step gradients, routed layers). A state is the
    state dict: trainable tensors, then BatchNorm running statistics."""
    cfg = recog.compose(
        [
            "backbone.scale=0.5",
            "data.image_size=64",
            "neck.embedding_size=16",
            "loss=ce_triplet",
            "mlflow.enabled=false",
            "backbone.dropout_prob=0.0",
            f"trainer.depthwise_matmul={depthwise}",
        ]
    )
    paddle.seed(0)
    model = build_model(cfg, class_num=4)
    net = TrainNet(model, build_loss(cfg, class_num=4, embedding_size=model.embedding_size))
    net.to(dtype=dtype)
    model.train()
    optimizer = _RecordingMomentum([p for p in net.parameters() if not p.stop_gradient])
    runner = StepRunner(net, optimizer, paddle.optimizer.lr.StepDecay(0.01, step_size=1000))
    configure_step(runner, cfg.trainer)
    start = {key: value.numpy() for key, value in net.state_dict().items()}
    rng = np.random.default_rng(0)
    labels = paddle.to_tensor(np.repeat(np.arange(4), 2).astype("int64"))
    losses = []
    for step in range(steps):
        images = paddle.to_tensor(rng.standard_normal((8, 3, 64, 64)).astype(dtype))
        losses.append({name: float(value) for name, value in runner(images, labels, step=step + 1).items()})
    final = {key: value.numpy() for key, value in net.state_dict().items()}
    routed = sum(1 for layer in model.sublayers() if isinstance(layer, DepthwiseMatmulConv2D))
    return start, final, losses, optimizer.gradients, routed


@pytest.mark.slow
def test_pplcnet_training_step_computes_paddles_gradients_in_float32():
    """One float32 step from the same weights and images: the losses, every gradient (93 tensors) and
    the state after the update (weights, BatchNorm statistics) equal Paddle's kernel's to float32
    rounding. Measured: gradients within 2.0e-5 of each tensor's largest, the state within 3.2e-5 of
    its largest change; Paddle's own kernel is 2.3e-5 from the float64 gradients. Over several
    float32 steps no such bound holds for any two roundings (see the float64 test below)."""
    start, ours, losses, grads, routed = _train("true", steps=1)
    _, reference, ref_losses, ref_grads, none = _train("false", steps=1)
    assert routed == 13 and none == 0  # PP-LCNet's 13 depthwise convolutions
    assert list(ours) == list(reference)  # nothing renamed or added
    for name, value in ref_losses[0].items():
        assert losses[0][name] == pytest.approx(value, rel=1e-5)
    assert len(grads[0]) == len(ref_grads[0]) == 93
    for i, (grad, ref) in enumerate(zip(grads[0], ref_grads[0])):
        assert grad is not None and ref is not None, f"trainable tensor {i} got no gradient"
        scale = float(np.abs(ref).max())
        assert scale > 0 and float(np.abs(grad - ref).max()) <= 2e-4 * scale, f"gradient {i}"
    keys = list(reference)
    assert_same_training([ours[k] for k in keys], [reference[k] for k in keys], [start[k] for k in keys], 2e-4)


@pytest.mark.slow
def test_pplcnet_trains_the_same_weights_in_float64():
    """Three Momentum steps (CE + batch-hard triplet): the same weights, BatchNorm statistics and
    optimizer path to 1e-9 of each tensor's change (measured 4e-13).

    Why float64: two float32 computations that round differently part after a few steps of this
    training. The differences (1e-7 at first) grow about tenfold per step until an activation falls on
    the other side of a kink (Hardswish's derivative jumps at -3 and 3, ReLU's at 0) or a triplet's
    hardest negative changes, and that channel's update then differs by a visible fraction: with the
    matrix product on vs off, 4 activations of step 3 do and one BatchNorm weight's update differs by
    5.5%; Paddle's kernel against itself, from initial weights perturbed by one rounding (6e-8), by
    14% after 3 steps. Float32 weights after several steps cannot tell a wrong gradient from rounding;
    float64 removes the rounding and leaves what the kernels compute."""
    start, ours, _, _, routed = _train("true", steps=3, dtype="float64")
    _, reference, _, _, _ = _train("false", steps=3, dtype="float64")
    assert routed == 13
    assert all(value.dtype == np.float64 for value in reference.values())
    keys = list(reference)
    assert_same_training([ours[k] for k in keys], [reference[k] for k in keys], [start[k] for k in keys], 1e-9)


def test_auto_is_on_for_the_cpu_only():
    trainer = recog.compose([]).trainer
    assert resolve_depthwise_matmul(trainer, "cpu") and not resolve_depthwise_matmul(trainer, "gpu")
    assert not resolve_depthwise_matmul(recog.compose(["trainer.depthwise_matmul=false"]).trainer, "cpu")
    assert resolve_depthwise_matmul(recog.compose(["trainer.depthwise_matmul=true"]).trainer, "gpu")
    with pytest.raises(ConfigError, match="trainer.depthwise_matmul"):
        resolve_depthwise_matmul(recog.compose(["trainer.depthwise_matmul=maybe"]).trainer, "cpu")
