"""``python run.py``: a real run, and bad input that must end in one clear line, exit code 2.

Each command runs ``recog.app.main`` in this process (tests/commands.py: what run.py runs after
start-up); one runs ``run.py`` itself, as a new process.
"""

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from commands import cli, run_py

ROOT = Path(__file__).resolve().parents[1]


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
def test_run_py_is_the_app_with_its_exit_status():
    result = run_py("stage=eval")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "recog: stage=eval needs a trained model: model_path=<run dir>/best_model"


@pytest.mark.slow
def test_train_run_writes_run_dir_and_mlflow(image_list_root, capfd):
    result = cli(
        "stage=train",
        *list_args(image_list_root),
        "export.cpu_onednn=off",  # the export after training without its oneDNN probe (test_export has one)
        "hydra.run.dir=" + str(image_list_root / "run"),
        capfd=capfd,
    )
    assert result.returncode == 0, result.stderr
    assert (image_list_root / "run" / "best_model" / "model.safetensors").is_file()
    assert (image_list_root / "out" / "mlflow.db").is_file()
    assert "MLflow run" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "WARNING" not in result.stderr


def test_unknown_key_lists_valid_keys(capfd):
    result = cli("backbone.scael=1.0", capfd=capfd)
    assert_clean_failure(result, "scael", "scale", "stop_layer")


def test_unknown_stage_lists_stages(capfd):
    assert_clean_failure(cli("stage=predictt", capfd=capfd), "predictt", "train", "eval")


def test_unknown_option_lists_options(capfd):
    assert_clean_failure(cli("head=arcmarginn", capfd=capfd), "arcmarginn", "arcmargin", "fc")


def test_missing_dataset_root(tmp_path, capfd):
    assert_clean_failure(
        cli("dataset=sop", f"dataset.root={tmp_path / 'nope'}", f"paths.output_root={tmp_path}", capfd=capfd),
        str(tmp_path / "nope"),
        "Ebay_train.txt",
    )


def test_malformed_list_line_names_file_and_line(image_list_root, capfd):
    (image_list_root / "bad.txt").write_text("img/0_0.png 0\nimg/0_1.png zero\n")
    assert_clean_failure(cli(*list_args(image_list_root, train="bad.txt"), capfd=capfd), "bad.txt", "line 2")


@pytest.mark.slow
def test_undecodable_image_is_named_when_bad_images_fail_the_run(image_list_root, capfd):
    (image_list_root / "img" / "1_2.png").write_bytes(b"not a png")
    assert_clean_failure(
        cli(*list_args(image_list_root), "mlflow.enabled=false", "data.on_bad_image=fail", capfd=capfd),
        "1_2.png",
        "cannot decode",
    )


def test_unknown_stop_layer_lists_valid_names(tmp_path, capfd):
    assert_clean_failure(
        cli("backbone.stop_layer=blocks9", f"paths.output_root={tmp_path}", capfd=capfd),
        "blocks9",
        "flatten",
        "blocks5.2",
    )


def test_run_script_leaves_the_heap_out_of_the_collections_that_follow():
    """``python run.py``'s process (recog.app.run_script): what exists before the stage and at the
    end is frozen (gc.freeze), and the exit status is main's."""
    import gc

    from recog.app import run_script

    gc.unfreeze()
    try:
        assert run_script(["stage=eval"], script="run.py") == 2  # refused by the precheck: main's status
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


JOB_PROCESS = """
import gc
import multiprocessing
import os
import sys


class Cycle:
    def __init__(self):
        self.me = self

    def __del__(self, write=os.write):  # os.write itself: the module may be gone by then
        write(1, b"a cycle was collected at exit")


def job():
    from recog.app import freeze_heap_in_job_processes

    global kept
    freeze_heap_in_job_processes()
    print("frozen before the job:", gc.get_freeze_count() > 0, flush=True)
    kept = Cycle()  # garbage in a cycle once the interpreter clears this module at exit


if __name__ == "__main__":
    if sys.argv[1] == "worker":  # a launcher's worker process (joblib's loky workers are spawned alike)
        child = multiprocessing.get_context("spawn").Process(target=job)
        child.start()
        child.join()
    else:  # a process that calls recog in-process
        job()
"""


@pytest.mark.parametrize(
    "process, submitit, collected",
    [("worker", False, False), ("caller", True, False), ("caller", False, True)],
    ids=["multiprocessing_worker", "submitit_job", "in_process_caller"],
)
def test_a_job_process_freezes_its_heap_and_skips_the_last_collections(process, submitit, collected, tmp_path):
    """A process a launcher started for jobs (a multiprocessing worker such as joblib's, a submitit
    job) freezes its heap before its first job and at exit, as run.py's does; a process calling
    recog in-process keeps the interpreter's collections at exit."""
    script = tmp_path / "job.py"
    script.write_text(JOB_PROCESS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("SUBMITIT_EXECUTOR", None)
    if submitit:
        env["SUBMITIT_EXECUTOR"] = "local"  # what submitit sets in its job processes
    command = [sys.executable, str(script), process]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"frozen before the job: {not collected}" in result.stdout
    assert ("a cycle was collected at exit" in result.stdout) == collected
