"""An export is verified against its manifest.json before any feature is computed: damage is an
error naming the file, never features from damaged weights; an export without a manifest (older
recog) loads with a warning; preprocess.json's fields are type-checked."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from recog.errors import RecogError
from recog.inference import ExportedModel, load_preprocess
from recog.utils.manifest import IntegrityError

IMAGES = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)


@pytest.fixture
def copy(exported, tmp_path):
    target = tmp_path / "export"
    shutil.copytree(exported[0], target)
    return target


def _cut(file: Path, count: int) -> None:
    file.write_bytes(file.read_bytes()[:-count])


def _flip(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[-100] ^= 0x10
    file.write_bytes(bytes(data))


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, damage, message",
    [
        ("inference.pdiparams", lambda f: _cut(f, 4096), r"inference.pdiparams is truncated \(\d+ bytes"),
        ("inference.pdiparams", _flip, "inference.pdiparams was altered"),
        ("inference.json", lambda f: f.unlink(), "inference.json is missing"),
        ("preprocess.json", lambda f: f.write_text("garbage"), "preprocess.json is (truncated|longer)"),
        ("preprocess.json", lambda f: f.write_text("{}"), "preprocess.json is truncated"),
        ("export_report.json", lambda f: f.unlink(), "export_report.json is missing"),
    ],
)
def test_a_damaged_export_is_an_error_naming_the_file(copy, name, damage, message):
    damage(copy / name)
    with pytest.raises(IntegrityError, match=message) as error:
        ExportedModel(copy, device="cpu")
    assert str(copy / name) in str(error.value) and "export the model again" in str(error.value)


@pytest.mark.slow
def test_a_truncated_export_stops_stage_predict_with_exit_code_2(copy, tmp_path, run_cli):
    """Before manifests, cutting 4096 bytes gave different features and exit code 0."""
    _cut(copy / "inference.pdiparams", 4096)
    images = tmp_path / "images"
    images.mkdir()
    import cv2

    cv2.imwrite(str(images / "a.png"), np.full((20, 20, 3), 90, np.uint8))
    result = run_cli(
        "stage=predict",
        f"predict.model_dir={copy}",
        f"predict.input={images}",
        "mlflow.enabled=false",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in output
    assert "inference.pdiparams is truncated" in output
    assert not (tmp_path / "run" / "features.npy").exists()


def test_an_export_without_a_manifest_loads_with_a_warning(copy, exported, caplog):
    (copy / "manifest.json").unlink()
    legacy = ExportedModel(copy, device="cpu")
    assert "has no manifest.json" in caplog.text
    np.testing.assert_array_equal(legacy.predict(IMAGES), ExportedModel(exported[0], device="cpu").predict(IMAGES))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"image_size": "32"}, "image_size must be an integer, got str"),
        ({"normalize": 1}, "normalize must be true/false, got int"),
        ({"mean": [0.5, 0.5]}, r"mean must be a list of 3 numbers"),
        ({"std": [0.5, 0, 0.5]}, r"std must be 3 numbers in 0.001..1000"),
        # the probe's values: a 30 GB resize, NaN features from NaN / Inf means or a tiny std
        ({"image_size": 100000}, r"image_size must be a whole number in 1..8192"),
        ({"input": {"shape": [-1, 3, 64, 64]}}, r"input must be an input of shape \[-1, 3, 32, 32\]"),
        ({"mean": [float("nan"), 0.5, 0.5]}, r"mean must be 3 finite numbers in -1000..1000 .*got \[NaN"),
        ({"mean": [float("inf"), 0.5, 0.5]}, r"mean must be 3 finite numbers .*got \[Infinity"),
        ({"std": [1e-45, 0.2, 0.2]}, r"std must be 3 numbers in 0.001..1000 .*got \[1e-45"),
        ({"feature_dim": 0}, "feature_dim must be a positive integer"),
        ({"binarize": "maybe"}, "binarize must be null or one of sign, round"),
        ({"runtime": {"cpu_onednn": "turbo"}}, "runtime.cpu_onednn must be one of full, no_placement, off"),
        ({"format_version": 99}, "newer recog"),
    ],
)
def test_every_field_of_preprocess_json_is_checked(copy, change, message):
    (copy / "manifest.json").unlink()  # a legacy export: the fields themselves are checked
    path = copy / "preprocess.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(RecogError, match=message):
        load_preprocess(copy)


def test_a_file_added_to_an_export_is_refused(copy):
    (copy / "model.onnx").write_bytes(b"not from the export")
    with pytest.raises(IntegrityError, match="model.onnx is not listed in"):
        ExportedModel(copy, device="cpu")


@pytest.mark.parametrize(
    "add, name",
    [
        (lambda d: (d / "sub" / "deeper").mkdir(parents=True), "sub"),
        (lambda d: (d / "link").symlink_to(d.parent), "link"),
        (lambda d: (d / "dangling").symlink_to(d / "nowhere"), "dangling"),
    ],
)
def test_a_folder_or_link_added_to_an_export_is_refused(copy, add, name):
    add(copy)
    with pytest.raises(IntegrityError, match=f"{name} is not listed in"):
        load_preprocess(copy)


def test_a_deeply_nested_preprocess_json_is_a_message(copy):
    (copy / "manifest.json").unlink()
    (copy / "preprocess.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(IntegrityError, match="preprocess.json nests deeper than 64 levels"):
        load_preprocess(copy)


def test_nan_features_are_an_error_not_a_result(exported):
    model = ExportedModel(exported[0], device="cpu")
    images = IMAGES.copy()
    images[1, 0, 0, 0] = np.nan
    with pytest.raises(RecogError, match="gave NaN or Inf features for 1 of 2 images"):
        model.predict(images)
