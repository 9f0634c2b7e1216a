"""The step strategy's finite check: the fused check gives the same answer as one isfinite per tensor
and leaves the gradients untouched; the runner uses the one its strategy names."""

import numpy as np
import paddle
import pytest

import recog  # noqa: F401
from recog.training.step import StepRunner
from recog.training.strategy import StepStrategy, all_finite, all_finite_per_tensor


def _grads(rng, dtypes=("float32",)):
    shapes = [(3, 4), (5,), (2, 3, 3, 1), (7, 2)]
    return [paddle.to_tensor(rng.standard_normal(s).astype(dtypes[i % len(dtypes)])) for i, s in enumerate(shapes)]


@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", [0, 2, 3])
@pytest.mark.parametrize("dtypes", [("float32",), ("float32", "float64")])
def test_fused_check_agrees_with_per_tensor_check(bad, where, dtypes):
    rng = np.random.default_rng(where)
    grads = _grads(rng, dtypes)
    if bad is not None:
        values = grads[where].numpy()
        values.flat[values.size // 2] = bad
        grads[where] = paddle.to_tensor(values)
    before = [g.numpy().copy() for g in grads]
    loss = paddle.to_tensor(1.5)
    fused = bool(all_finite(loss, grads))
    assert fused == bool(all_finite_per_tensor(loss, grads)) == (bad is None)
    for old, new in zip(before, grads):
        if bad is None:  # divided by 1.0 in place: bit-identical
            np.testing.assert_array_equal(new.numpy(), old)
        else:  # the step is dropped: finite entries zeroed, the non-finite ones still non-finite
            np.testing.assert_array_equal(np.isfinite(new.numpy()), np.isfinite(old))


def test_fused_check_sees_a_non_finite_loss_with_finite_gradients():
    grads = _grads(np.random.default_rng(0))
    assert not bool(all_finite(paddle.to_tensor(float("nan")), grads))
    assert not bool(all_finite(paddle.to_tensor(float("inf")), []))
    assert bool(all_finite(paddle.to_tensor(2.0), []))


@pytest.mark.parametrize("fused", [True, False])
def test_step_runner_flags_a_nan_gradient_with_either_check(fused):
    layer = paddle.nn.Linear(3, 2)
    strategy = StepStrategy(layer, fused_finite_check=fused)
    runner = StepRunner(layer, None, None, strategy=strategy)  # read_flags uses neither optimizer nor schedule
    loss = (layer(paddle.ones([4, 3])) ** 2).sum()
    loss.backward()
    assert runner.read_flags(loss) == (False, False)
    layer.bias.grad.set_value(paddle.to_tensor([0.0, float("nan")]))
    assert runner.read_flags(loss) == (True, False)
