"""trainer.depthwise_matmul: depthwise convolutions as a matrix product compute Paddle's conv2d (outputs
and gradients), train PP-LCNet to the same weights, leave parameters and programs alone."""

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
    "channels, size, kernel, stride, bias",
    [
        (4, 8, 3, 1, False),
        (4, 8, 3, 2, True),
        (6, 4, 5, 1, False),
        (6, 4, 5, 2, True),
        (3, 2, 5, 1, False),
        (2, 5, 3, 2, False),
        (3, 7, 5, 1, True),
    ],
)
def test_outputs_and_gradients_equal_paddles_depthwise_conv(channels, size, kernel, stride, bias):
    rng = np.random.default_rng(channels * size + kernel)
    x_value = rng.standard_normal((3, channels, size, size)).astype(np.float32)
    w_value = rng.standard_normal((channels, 1, kernel, kernel)).astype(np.float32)
    b_value = rng.standard_normal(channels).astype(np.float32) if bias else None
    out = (size + 2 * (kernel // 2) - kernel) // stride + 1
    upstream = paddle.to_tensor(rng.standard_normal((3, channels, out, out)).astype(np.float32))
    results = []
    for fn in (
        lambda x, w, b: F.conv2d(x, w, b, stride=stride, padding=kernel // 2, groups=channels),
        lambda x, w, b: depthwise_matmul(x, w, b, stride, kernel // 2),
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


def test_evaluation_large_maps_and_traced_programs_keep_paddles_kernel(monkeypatch):
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
    static = paddle.jit.to_static(
        layer, input_spec=[paddle.static.InputSpec([None, 4, 8, 8], "float32")], full_graph=True
    )
    static(paddle.rand([2, 4, 8, 8]))
    assert len(calls) == 1  # the program was built with conv2d


def _train(depthwise: str, steps: int = 3):
    """``steps`` StepRunner steps of PP-LCNet x0.5 at 64 px (maps down to 2 x 2) from seed 0:
    (initial and final trainable tensors, state-dict keys, routed layers)."""
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
    loss_fn = build_loss(cfg, class_num=4, embedding_size=model.embedding_size)
    model.train()
    net = TrainNet(model, loss_fn)
    params = [p for p in net.parameters() if not p.stop_gradient]
    start = [p.numpy() for p in params]
    optimizer = paddle.optimizer.Momentum(learning_rate=0.01, momentum=0.9, parameters=params, weight_decay=5e-4)
    runner = StepRunner(net, optimizer, paddle.optimizer.lr.StepDecay(0.01, step_size=1000))
    configure_step(runner, cfg.trainer)
    rng = np.random.default_rng(0)
    labels = paddle.to_tensor(np.repeat(np.arange(4), 2).astype("int64"))
    for step in range(steps):
        runner(paddle.to_tensor(rng.standard_normal((8, 3, 64, 64)).astype("float32")), labels, step=step + 1)
    routed = sum(1 for layer in model.sublayers() if isinstance(layer, DepthwiseMatmulConv2D))
    return start, [p.numpy() for p in params], list(model.state_dict()), routed


@pytest.mark.slow
def test_pplcnet_trains_the_same_weights_with_and_without_it():
    start, ours, state_keys, routed = _train("true")
    _, reference, reference_keys, none = _train("false")
    assert routed == 13 and none == 0  # PP-LCNet's 13 depthwise convolutions
    assert state_keys == reference_keys  # nothing renamed or added
    assert_same_training(ours, reference, start)


def test_auto_is_on_for_the_cpu_only():
    trainer = recog.compose([]).trainer
    assert resolve_depthwise_matmul(trainer, "cpu") and not resolve_depthwise_matmul(trainer, "gpu")
    assert not resolve_depthwise_matmul(recog.compose(["trainer.depthwise_matmul=false"]).trainer, "cpu")
    assert resolve_depthwise_matmul(recog.compose(["trainer.depthwise_matmul=true"]).trainer, "gpu")
    with pytest.raises(ConfigError, match="trainer.depthwise_matmul"):
        resolve_depthwise_matmul(recog.compose(["trainer.depthwise_matmul=maybe"]).trainer, "cpu")
