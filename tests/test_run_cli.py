"""``python run.py``: a real run, and bad input that must end in one clear line, exit code 2.

The process boundary is what the real run and the errors raised inside a stage check, so those run
``run.py`` in a subprocess; the errors found while composing (or just after) run ``run.py``'s
``__main__`` in this process (:func:`run_in_process`), which is the same code without the start-up.
"""

import logging
import runpy
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import warm_python
from hydra.core.global_hydra import GlobalHydra

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=ROOT):
    return subprocess.run(
        [warm_python.python(), str(ROOT / "run.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def run_in_process(*args, capfd):
    """``run.py``'s ``__main__`` here: ``(exit code, stdout + stderr)``. Hydra's logging setup and
    global state are put back afterwards so that the tests that follow see the usual process."""
    root = logging.getLogger()
    saved = {
        name: (lg.handlers[:], lg.level, lg.propagate)
        for name, lg in [("", root), *logging.Logger.manager.loggerDict.items()]
        if isinstance(lg, logging.Logger)
    }
    argv = sys.argv
    sys.argv = [str(ROOT / "run.py"), *args]
    GlobalHydra.instance().clear()
    try:
        with pytest.raises(SystemExit) as stop:
            runpy.run_path(str(ROOT / "run.py"), run_name="__main__")
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()
        for name, (handlers, level, propagate) in saved.items():
            logger = logging.getLogger(name or None)
            logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(args, stop.value.code, out, err)


def assert_clean_failure(result, *fragments):
    assert result.returncode == 2, result.stderr
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    for fragment in fragments:
        assert fragment in output, output


@pytest.fixture()
def image_list_root(tmp_path):
    """3 classes x 4 random PNGs, list files, and one image that is not an image."""
    lines = []
    for label in range(3):
        for i in range(4):
            path = f"img/{label}_{i}.png"
            (tmp_path / "img").mkdir(exist_ok=True)
            cv2.imwrite(str(tmp_path / path), (np.random.default_rng(i).random((12, 12, 3)) * 255).astype(np.uint8))
            lines.append(f"{path} {label}")
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "query.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


def list_args(root, train="train.txt", query="query.txt"):
    return [
        "dataset=image_list",
        f"dataset.root={root}",
        f"dataset.train_list={train}",
        f"dataset.query_list={query}",
        "data.batch_size=6",
        "data.samples_per_class=2",
        "backbone.scale=0.25",
        "data.image_size=16",
        "trainer.epochs=1",
        "data.num_workers=0",
        f"paths.output_root={root / 'out'}",
    ]


@pytest.mark.slow
def test_train_run_writes_run_dir_and_mlflow(image_list_root):
    result = run_cli("stage=train", *list_args(image_list_root), "hydra.run.dir=" + str(image_list_root / "run"))
    assert result.returncode == 0, result.stderr
    assert (image_list_root / "run" / "best_model" / "model.safetensors").is_file()
    assert (image_list_root / "out" / "mlflow.db").is_file()
    assert "MLflow run" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "WARNING" not in result.stderr


def test_unknown_key_lists_valid_keys(capfd):
    result = run_in_process("backbone.scael=1.0", capfd=capfd)
    assert_clean_failure(result, "scael", "scale", "stop_layer")


def test_unknown_stage_lists_stages(capfd):
    assert_clean_failure(run_in_process("stage=predictt", capfd=capfd), "predictt", "train", "eval")


def test_unknown_option_lists_options(capfd):
    assert_clean_failure(run_in_process("head=arcmarginn", capfd=capfd), "arcmarginn", "arcmargin", "fc")


def test_missing_dataset_root(tmp_path, capfd):
    assert_clean_failure(
        run_in_process(
            "dataset=sop", f"dataset.root={tmp_path / 'nope'}", f"paths.output_root={tmp_path}", capfd=capfd
        ),
        str(tmp_path / "nope"),
        "Ebay_train.txt",
    )


@pytest.mark.slow
def test_malformed_list_line_names_file_and_line(image_list_root):
    (image_list_root / "bad.txt").write_text("img/0_0.png 0\nimg/0_1.png zero\n")
    assert_clean_failure(run_cli(*list_args(image_list_root, train="bad.txt")), "bad.txt", "line 2")


@pytest.mark.slow
def test_undecodable_image_is_named_when_bad_images_fail_the_run(image_list_root):
    (image_list_root / "img" / "1_2.png").write_bytes(b"not a png")
    assert_clean_failure(
        run_cli(*list_args(image_list_root), "mlflow.enabled=false", "data.on_bad_image=fail"),
        "1_2.png",
        "cannot decode",
    )


def test_unknown_stop_layer_lists_valid_names(tmp_path, capfd):
    assert_clean_failure(
        run_in_process("backbone.stop_layer=blocks9", f"paths.output_root={tmp_path}", capfd=capfd),
        "blocks9",
        "flatten",
        "blocks5.2",
    )
