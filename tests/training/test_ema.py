"""The weight average: the EMA formula with its warm-up, BatchNorm statistics averaged too, the
averaged weights applied only inside the block, and an exact round trip through its state."""

import numpy as np
import paddle
import pytest

from recog.training.ema import WeightAverage


def _model():
    paddle.seed(0)
    return paddle.nn.Sequential(paddle.nn.Linear(3, 4), paddle.nn.BatchNorm1D(4))


def _step(model, value):
    with paddle.no_grad():
        for param in model.parameters():
            param.set_value(paddle.full(param.shape, value, param.dtype))
        model[1]._mean.set_value(paddle.full([4], value * 2, "float32"))


def test_the_average_follows_the_formula_with_its_warm_up():
    model = _model()
    initial = model[0].weight.numpy().copy()
    average = WeightAverage(model, decay=0.9)
    expected, mean = initial.astype(np.float64), np.zeros(4)
    for n, value in enumerate([1.0, -2.0, 0.5, 3.0]):
        _step(model, value)
        d = min(0.9, (1 + n) / (10 + n))
        assert average.rate() == pytest.approx(d)
        average.update()
        expected = d * expected + (1 - d) * value
        mean = d * mean + (1 - d) * value * 2
    assert np.allclose(average.average["0.weight"].numpy(), expected, atol=1e-6)
    assert np.allclose(average.average["1._mean"].numpy(), mean, atol=1e-6)  # running statistics too


def test_the_averaged_weights_are_applied_inside_the_block_only():
    model = _model()
    average = WeightAverage(model, decay=0.5)
    _step(model, 4.0)
    average.update()
    raw = model[0].weight.numpy().copy()
    with average.applied() as applied:
        assert applied is model
        assert np.allclose(model[0].weight.numpy(), average.average["0.weight"].numpy())
        assert not np.allclose(model[0].weight.numpy(), raw)
    assert np.array_equal(model[0].weight.numpy(), raw)


def test_state_round_trip_and_a_mismatch_is_refused():
    model = _model()
    average = WeightAverage(model, decay=0.99)
    _step(model, 1.5)
    average.update()
    restored = WeightAverage(_model(), decay=0.99)
    restored.load_state_dict(average.state_dict())
    assert restored.updates == 1
    for name in average.average:
        assert np.array_equal(restored.average[name].numpy(), average.average[name].numpy())
    other = WeightAverage(paddle.nn.Linear(3, 4), decay=0.99)
    with pytest.raises(ValueError, match="does not fit the model"):
        other.load_state_dict(average.state_dict())
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(model, decay=1.0)
