"""recog.inference: loading an export, preprocessing images as recorded, dynamic batches, bad input."""

import json

import numpy as np
import paddle
import pytest

from recog.data import build_transform
from recog.errors import ConfigError, RecogError
from recog.inference import ExportedModel, load_preprocess, preprocess_image
from recog.inference.export import dygraph_features


@pytest.fixture(scope="module")
def model(exported):
    return ExportedModel(exported[0], device="cpu", threads=2)


def test_predict_matches_the_dygraph_model(model, exported):
    _, net, _ = exported
    images = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
    features = model.predict(images)
    assert features.dtype == np.float32 and features.shape == (3, 24) == (3, model.feature_dim)
    assert np.abs(features - dygraph_features(net, images, normalize=True)).max() < 1e-4


@pytest.mark.parametrize("mode", ["no_placement", "off"])
def test_every_onednn_mode_computes_the_same_features(model, exported, mode):
    images = np.random.default_rng(4).standard_normal((2, 3, 32, 32)).astype(np.float32)
    other = ExportedModel(exported[0], device="cpu", threads=2, onednn=mode)
    assert other.onednn == mode and model.onednn == "full"  # the export recorded full
    assert np.abs(other.predict(images) - model.predict(images)).max() < 1e-5


def test_dynamic_batch_gives_the_same_features_per_image(model):
    images = np.random.default_rng(2).standard_normal((5, 3, 32, 32)).astype(np.float32)
    batch = model.predict(images)
    singles = np.concatenate([model.predict(images[i : i + 1]) for i in range(5)])
    assert batch.shape == singles.shape == (5, 24)
    assert np.abs(batch - singles).max() < 1e-5
    assert not np.allclose(batch[0], batch[1])  # different images, different features
    assert model.predict(images[:0]).shape == (0, 24)


def test_an_image_of_another_size_is_resized_as_recorded(model):
    image = np.random.default_rng(3).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    x = preprocess_image(image, model.preprocess)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    pp = model.preprocess
    expected = build_transform(32, pp["mean"], pp["std"], train=False, hflip=False)(image)
    assert np.array_equal(x, expected)
    # the recorded mean/std are what is applied: a mid-gray image maps to (0.5 - mean) / std
    gray = preprocess_image(np.full((10, 10, 3), 128, np.uint8), model)
    assert np.allclose(gray[:, 0, 0], (128 / 255 - np.array(pp["mean"])) / np.array(pp["std"]), atol=1e-5)
    assert preprocess_image(np.zeros((40, 40), np.uint8), pp).shape == (3, 32, 32)  # grayscale -> 3 channels
    features = model.predict_images([image, np.zeros((20, 20, 3), np.uint8)])
    assert features.shape == (2, 24)
    assert np.abs(features[:1] - model.predict(x[None])).max() < 1e-6


def test_bad_images_and_batches_are_clear_errors(model):
    with pytest.raises(ValueError, match=r"\[N, 3, 32, 32\]"):
        model.predict(np.zeros((2, 3, 64, 64), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        preprocess_image(np.zeros((8, 8, 3), np.float32), model.preprocess)
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        preprocess_image(np.zeros((8, 8, 4), np.uint8), model.preprocess)
    with pytest.raises(ValueError, match="no binarisation"):
        model.predict(np.zeros((1, 3, 32, 32), np.float32), binarize=True)


def test_a_directory_that_is_not_an_export_is_a_recog_error(tmp_path, exported):
    with pytest.raises(RecogError, match="inference.json, inference.pdiparams, preprocess.json") as error:
        ExportedModel(tmp_path)
    assert "stage=export" in str(error.value) and "export directory" in str(error.value)
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(RecogError, match="looks like a trained model: export it first"):
        ExportedModel(tmp_path)
    with pytest.raises(RecogError, match="not a directory"):
        ExportedModel(tmp_path / "nope")
    # an export missing only its description
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("inference.json", "inference.pdiparams"):
        (partial / name).write_bytes((exported[0] / name).read_bytes())
    with pytest.raises(RecogError, match="missing preprocess.json"):
        ExportedModel(partial)
    (partial / "preprocess.json").write_text(json.dumps({"image_size": 32}))
    with pytest.raises(RecogError, match="not a recog export description"):
        load_preprocess(partial)


@pytest.mark.skipif(paddle.is_compiled_with_cuda(), reason="only a CPU build of Paddle refuses device=gpu")
def test_gpu_on_a_cpu_build_is_a_config_error(exported):
    with pytest.raises(ConfigError, match="no CUDA support"):
        ExportedModel(exported[0], device="gpu")
    with pytest.raises(ConfigError, match="auto, cpu or gpu"):
        ExportedModel(exported[0], device="tpu")
    with pytest.raises(ConfigError, match="no_placement"):
        ExportedModel(exported[0], device="cpu", onednn="fast")
