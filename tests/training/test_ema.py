"""trainer.ema_decay: the weight average follows its formula (BatchNorm statistics too), the evals
and best_model/ hold the average, and a stopped run resumes it exactly."""

import numpy as np
import paddle
import pytest
from image_lists import write_image_lists
from safetensors.numpy import load_file

import recog
from recog.stages import train
from recog.training.ema import WeightAverage
from recog.training.trainer import Trainer

RUN = [
    "backbone.scale=0.25",
    "data.image_size=16",
    "data.num_workers=0",
    "neck.embedding_size=16",
    "data.batch_size=8",
    "data.samples_per_class=4",
    "trainer.steps_per_epoch=3",
    "trainer.epochs=2",
    "trainer.ema_decay=0.9",
    "trainer.eval_every=2",  # one eval, after the last step: best_model/ is then the final average
    "mlflow.enabled=false",
    "export.after_train=false",
    "eval.engine=dygraph",
]


def _model():
    paddle.seed(0)
    return paddle.nn.Sequential(paddle.nn.Linear(3, 4), paddle.nn.BatchNorm1D(4))


def _set(model, value):
    with paddle.no_grad():
        for param in model.parameters():
            param.set_value(paddle.full(param.shape, value, param.dtype))
        model[1]._mean.set_value(paddle.full([4], value * 2, "float32"))


def test_the_average_follows_the_formula_with_its_warm_up():
    model = _model()
    initial = model[0].weight.numpy().astype(np.float64)
    average = WeightAverage(model, decay=0.9)
    expected, mean = initial, np.zeros(4)
    for n, value in enumerate([1.0, -2.0, 0.5, 3.0]):
        _set(model, value)
        d = min(0.9, (1 + n) / (10 + n))
        assert average.rate() == pytest.approx(d)
        average.update()
        expected = d * expected + (1 - d) * value
        mean = d * mean + (1 - d) * value * 2
    assert np.allclose(average.model[0].weight.numpy(), expected, atol=1e-6)
    assert np.allclose(average.model[1]._mean.numpy(), mean, atol=1e-6)  # running statistics too
    assert np.allclose(model[0].weight.numpy(), 3.0)  # the trained model keeps its own weights
    assert all(p.stop_gradient for p in average.model.parameters())
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(model, decay=1.0)


@pytest.fixture(scope="module")
def lists(tmp_path_factory):
    return write_image_lists(tmp_path_factory.mktemp("ema_lists"), (("train", 24), ("query", 8)))


def _weights(run_dir, name):
    return load_file(str(run_dir / name))


@pytest.mark.slow
def test_best_model_holds_the_average_and_a_stopped_run_resumes_it_exactly(lists, tmp_path, monkeypatch):
    evaluated = []
    real_evaluate = Trainer.evaluate

    def recording(self, state):
        evaluated.append(self.eval_model is not self.model)
        return real_evaluate(self, state)

    monkeypatch.setattr(Trainer, "evaluate", recording)
    whole = tmp_path / "whole"
    train.run(recog.compose(RUN + lists + [f"paths.output_root={tmp_path}"]), whole)
    assert evaluated == [True]  # the eval saw the average
    last, best = (
        _weights(whole / "checkpoints" / "last", "ema.safetensors"),
        _weights(whole / "best_model", "model.safetensors"),
    )
    raw = _weights(whole / "checkpoints" / "last", "model.safetensors")
    assert set(last) == set(raw)
    assert all(np.array_equal(best[k], last[k]) for k in last)
    assert any(not np.allclose(raw[k], last[k]) for k in raw)  # the average is not the raw weights

    real_epoch = Trainer.train_epoch

    def stop_in_epoch_2(self, state):
        if state["epoch"] == 1:
            raise KeyboardInterrupt
        return real_epoch(self, state)

    stopped = tmp_path / "stopped"
    monkeypatch.setattr(Trainer, "train_epoch", stop_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train.run(recog.compose(RUN + lists + [f"paths.output_root={tmp_path}"]), stopped)
    monkeypatch.setattr(Trainer, "train_epoch", real_epoch)
    train.run(recog.compose([f"paths.output_root={tmp_path}", "resume=true"]), stopped)
    resumed = _weights(stopped / "checkpoints" / "last", "ema.safetensors")
    for name in last:
        np.testing.assert_array_equal(resumed[name], last[name], err_msg=name)
