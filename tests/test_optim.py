"""Learning-rate schedules by hand, and optimizers built from composed configs."""

import recog  # noqa: F401  (sets up the runtime before paddle is imported)

# isort: split

import math

import numpy as np
import paddle
import pytest

from recog.api import build_optimizer, compose
from recog.models.backbones.pplcnet import ConvBNLayer
from recog.optim import multi_step, warmup_cosine

pytestmark = pytest.mark.filterwarnings("ignore:When training, we now always track global mean")


def _rates(schedule, steps):
    """The rate used at iteration 0..steps (the schedule is stepped after every iteration)."""
    rates = []
    for _ in range(steps + 1):
        rates.append(schedule())
        schedule.step()
    return rates


# ---- warmup_cosine -----------------------------------------------------------------------------------
def test_warmup_cosine_by_hand():
    base, start, eta_min = 0.1, 0.01, 0.001
    rates = _rates(
        warmup_cosine(base, epochs=3, steps_per_epoch=10, warmup_epochs=1, warmup_start_lr=start, eta_min=eta_min), 30
    )
    assert rates[0] == pytest.approx(start)  # start of warmup
    assert rates[5] == pytest.approx(start + (base - start) * 5 / 10)  # linear
    assert rates[10] == pytest.approx(base)  # end of warmup = base rate
    # cosine over the remaining 20 steps: eta_min + (base - eta_min) * (1 + cos(pi * t / 20)) / 2
    assert rates[15] == pytest.approx(eta_min + (base - eta_min) * (1 + math.cos(math.pi * 5 / 20)) / 2)
    assert rates[20] == pytest.approx((base + eta_min) / 2)
    assert rates[30] == pytest.approx(eta_min)  # the end
    assert all(a < b for a, b in zip(rates[:10], rates[1:11]))  # rising during warmup
    assert all(a > b for a, b in zip(rates[10:30], rates[11:31]))  # then falling


def test_warmup_cosine_fractional_and_no_warmup():
    rates = _rates(warmup_cosine(0.2, epochs=2, steps_per_epoch=10, warmup_epochs=0.5), 20)
    assert rates[0] == 0.0 and rates[1] == pytest.approx(0.2 / 5) and rates[5] == pytest.approx(0.2)
    assert rates[20] == pytest.approx(0.0)

    rates = _rates(warmup_cosine(0.2, epochs=2, steps_per_epoch=10, warmup_epochs=0, eta_min=0.02), 20)
    assert rates[0] == pytest.approx(0.2)
    assert rates[10] == pytest.approx(0.11)
    assert rates[20] == pytest.approx(0.02)


def test_warmup_cosine_warmup_longer_than_training():
    rates = _rates(warmup_cosine(0.1, epochs=1, steps_per_epoch=4, warmup_epochs=5), 4)
    assert rates[3] == pytest.approx(0.1)  # warmup capped at total - 1 steps: the base rate is reached
    assert all(math.isfinite(r) and 0 <= r <= 0.1 + 1e-12 for r in rates)


# ---- multi_step --------------------------------------------------------------------------------------
def test_multi_step_by_hand():
    rates = _rates(multi_step(0.1, epochs=6, steps_per_epoch=5, milestones=[2, 4], gamma=0.1), 30)
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(0.1)
    assert rates[10] == pytest.approx(0.01) and rates[19] == pytest.approx(0.01)  # epoch 2: x gamma
    assert rates[20] == pytest.approx(0.001) and rates[30] == pytest.approx(0.001)  # epoch 4: x gamma^2


def test_multi_step_with_warmup_keeps_milestones_in_epochs():
    rates = _rates(
        multi_step(
            0.1, epochs=6, steps_per_epoch=5, milestones=[2, 4], gamma=0.5, warmup_epochs=1, warmup_start_lr=0.0
        ),
        30,
    )
    assert rates[0] == 0.0 and rates[1] == pytest.approx(0.02)  # warmup over the first epoch
    assert rates[5] == pytest.approx(0.1) and rates[9] == pytest.approx(0.1)  # end of warmup = base rate
    assert rates[10] == pytest.approx(0.05) and rates[19] == pytest.approx(0.05)
    assert rates[20] == pytest.approx(0.025)


# ---- build_optimizer ---------------------------------------------------------------------------------
def _layer():
    paddle.seed(0)
    return paddle.nn.Linear(3, 2)


X = np.random.default_rng(0).standard_normal((5, 3)).astype("float32")


def _grads(layer):
    layer(paddle.to_tensor(X)).pow(2).sum().backward()
    return {n: p.grad.numpy().astype(np.float64) for n, p in layer.named_parameters()}


def _params(layer):
    return {n: p.numpy().astype(np.float64) for n, p in layer.named_parameters()}


def test_build_momentum_steps_the_parameters():
    cfg = compose(
        [
            "optimizer=momentum",
            "optimizer.lr=0.1",
            "optimizer.momentum=0.8",
            "optimizer.weight_decay=0.01",
            "scheduler=warmup_cosine",
            "scheduler.warmup_epochs=0",
            "trainer.epochs=2",
        ]
    )
    layer = _layer()
    optimizer, schedule = build_optimizer(cfg, layer.parameters(), steps_per_epoch=5)
    assert isinstance(optimizer, paddle.optimizer.Momentum)
    lr0 = optimizer.get_lr()
    assert lr0 == pytest.approx(0.1)

    p0, g0 = _params(layer), _grads(layer)
    optimizer.step()
    optimizer.clear_grad()
    schedule.step()
    p1 = _params(layer)
    velocity = {n: g0[n] + 0.01 * p0[n] for n in p0}  # L2 decay enters the gradient
    for n in p0:
        np.testing.assert_allclose(p1[n], p0[n] - lr0 * velocity[n], rtol=1e-5, atol=1e-7)

    lr1 = optimizer.get_lr()
    assert lr1 == pytest.approx(0.1 * (1 + math.cos(math.pi / 10)) / 2)  # the schedule drives the rate
    g1 = _grads(layer)
    optimizer.step()
    p2 = _params(layer)
    for n in p0:
        velocity[n] = 0.8 * velocity[n] + g1[n] + 0.01 * p1[n]
        np.testing.assert_allclose(p2[n], p1[n] - lr1 * velocity[n], rtol=1e-5, atol=1e-7)


def test_build_adamw_steps_the_parameters():
    cfg = compose(
        [
            "optimizer=adamw",
            "optimizer.lr=0.01",
            "optimizer.weight_decay=0.1",
            "scheduler=multi_step",
            "scheduler.milestones=[1]",
            "scheduler.gamma=0.5",
            "trainer.epochs=2",
        ]
    )
    layer = _layer()
    optimizer, schedule = build_optimizer(cfg, layer.parameters(), steps_per_epoch=2)
    assert isinstance(optimizer, paddle.optimizer.AdamW)
    p0, g0 = _params(layer), _grads(layer)
    optimizer.step()
    optimizer.clear_grad()
    p1 = _params(layer)
    for n in p0:  # first Adam step is lr * sign(g); decay is decoupled: p * (1 - lr * wd)
        np.testing.assert_allclose(p1[n], p0[n] * (1 - 0.01 * 0.1) - 0.01 * np.sign(g0[n]), rtol=1e-4, atol=1e-6)
    rates = [optimizer.get_lr()]
    for _ in range(3):
        schedule.step()
        rates.append(optimizer.get_lr())
    assert rates == pytest.approx([0.01, 0.01, 0.005, 0.005])  # milestone at epoch 1 = step 2


def test_build_optimizer_grad_clip():
    cfg = compose(
        [
            "optimizer=momentum",
            "optimizer.lr=0.1",
            "optimizer.weight_decay=0",
            "scheduler.warmup_epochs=0",
            "trainer.grad_clip=0.5",
        ]
    )
    layer = _layer()
    optimizer, _ = build_optimizer(cfg, layer.parameters(), steps_per_epoch=1)
    p0 = _params(layer)
    (layer(paddle.to_tensor(X * 100)).pow(2).sum()).backward()  # a huge gradient
    optimizer.step()
    step = np.sqrt(sum(((_params(layer)[n] - p0[n]) ** 2).sum() for n in p0))
    assert step == pytest.approx(0.1 * 0.5, rel=1e-4)  # lr * clip norm


@pytest.mark.parametrize("name", ["momentum", "adamw"])
def test_batch_norm_is_exempt_from_weight_decay(name):
    # PP-LCNet gives BN scale/shift an L2Decay(0.0) regularizer: no optimizer may decay them.
    paddle.seed(0)
    layer = ConvBNLayer(3, 4, 3, 1)
    cfg = compose([f"optimizer={name}", "optimizer.weight_decay=0.5", "scheduler.warmup_epochs=0"])
    optimizer, _ = build_optimizer(cfg, layer.parameters(), steps_per_epoch=1)
    before = _params(layer)
    out = layer(paddle.to_tensor(np.ones((1, 3, 4, 4), "float32")))
    (out.sum() * 0.0).backward()  # zero gradients: only weight decay can move a parameter
    optimizer.step()
    after = _params(layer)
    assert not np.allclose(after["conv.weight"], before["conv.weight"])  # decayed
    np.testing.assert_array_equal(after["bn.weight"], before["bn.weight"])
    np.testing.assert_array_equal(after["bn.bias"], before["bn.bias"])
