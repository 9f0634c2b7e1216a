"""Storage faults: a write that fails (disk full, permission denied) fails with a clear StorageError and
leaves every earlier output byte for byte as it was; a training run then resumes to the same end.

The faults are injected in-process (tests run as root, whom chmod does not stop): ``os.write`` fails
with ENOSPC for the files of one output only, found through /proc/self/fd, or ``os.mkdir`` fails
with EACCES for one output's temp directory.
"""

import errno
import math
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from image_lists import write_image_lists
from mlflow.tracking import MlflowClient
from mlflow_stores import new_store
from safetensors.numpy import load_file
from tiny import TINY_MODEL

import recog
from recog.errors import RecogError
from recog.inference import ExportedModel
from recog.search import GalleryIndex
from recog.stages import export, predict, train
from recog.utils import checkpoint
from recog.utils.atomic import StorageError

pytestmark = [
    pytest.mark.filterwarnings("ignore:There are some unused values in state_dict"),
    pytest.mark.slow,  # every test uses the trained reference run
    pytest.mark.xdist_group("test_storage_faults"),
]  # one xdist worker trains the reference run once

EPOCHS, STEPS = 3, 3
TIMING_METRICS = {"images_per_sec"}


# ---------------------------------------------------------------- faults


@contextmanager
def disk_full(path_part: str):
    """``os.write`` to a file whose path contains ``path_part`` fails: No space left on device."""
    real = os.write

    def write(fd, data):
        if path_part in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    os.write = write
    try:
        yield
    finally:
        os.write = real


@contextmanager
def permission_denied(path_part: str):
    """``os.mkdir`` of a directory whose path contains ``path_part`` fails: Permission denied."""
    real = os.mkdir

    def mkdir(path, *args, **kwargs):
        if path_part in os.fspath(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real(path, *args, **kwargs)

    os.mkdir = mkdir
    try:
        yield
    finally:
        os.mkdir = real


def fail_checkpoint_save(monkeypatch, run_dir: Path, fault, when) -> dict:
    """Run the first ``checkpoint.save_checkpoint(path, ...)`` for which ``when(path, state)`` holds
    under ``fault``; records the run's checkpoint directories as they were just before it."""
    real, record = checkpoint.save_checkpoint, {}

    def save(path, model, cfg, state, *args, **kwargs):
        if not record and when(Path(path), state):
            record.update(
                epoch=state["epoch"], before={name: tree(run_dir / name) for name in ("checkpoints", "best_model")}
            )
            with fault:
                return real(path, model, cfg, state, *args, **kwargs)
        return real(path, model, cfg, state, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_checkpoint", save)
    return record


# ---------------------------------------------------------------- helpers


def tree(path: Path) -> dict:
    """``{relative path: bytes}`` of every file under ``path`` (temp and ``.old`` entries included)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def leftovers(path: Path) -> list:
    return sorted(p.name for p in path.rglob("*") if ".tmp-" in p.name or p.name.endswith((".old", ".partial.npy")))


def history(client: MlflowClient, run_id: str) -> dict:
    """``{metric: {step: value}}``; a step logged again by a resume keeps its last value."""
    return {
        key: {m.step: _comparable(m.value) for m in client.get_metric_history(run_id, key)}
        for key in client.get_run(run_id).data.metrics
        if key not in TIMING_METRICS
    }


def _comparable(value: float):
    """NaN (the monitored metric's "no value yet" at step 0) as a string, which equals itself."""
    return "nan" if math.isnan(value) else value


def upto(metrics: dict, step: int) -> dict:
    """The metrics logged during steps 1 .. ``step`` (``best_*`` come once a run completes)."""
    kept = {
        key: {s: v for s, v in values.items() if s <= step}
        for key, values in metrics.items()
        if not key.startswith("best_")
    }
    return {key: values for key, values in kept.items() if values}


def assert_same_tensors(a: Path, b: Path, names=(checkpoint.MODEL_FILE, checkpoint.OPTIMIZER_FILE)) -> None:
    for name in names:
        x, y = load_file(str(a / name)), load_file(str(b / name))
        assert set(x) == set(y) and all(np.array_equal(x[k], y[k]) for k in x), name


@pytest.fixture(scope="module")
def lists(tmp_path_factory):
    """Random 12x12 PNGs of 5 classes in train / query / gallery lists: (root, dataset overrides)."""
    root = tmp_path_factory.mktemp("images")
    return root, write_image_lists(root, (("train", 60), ("query", 30), ("gallery", 20)))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store for the module (creating one costs seconds) and one Paddle thread (reproducible)."""
    import paddle

    paddle.base.core.set_num_threads(1)
    yield new_store(tmp_path_factory.mktemp("mlflow"))  # a migrated copy (tests/mlflow_stores.py)
    paddle.base.core.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))


def train_cfg(root: Path, lists, store: str, experiment: str, *extra):
    return recog.compose(
        [
            *TINY_MODEL,
            "trainer.device=cpu",
            f"trainer.epochs={EPOCHS}",
            f"trainer.steps_per_epoch={STEPS}",
            "trainer.eval_every=1",
            "trainer.log_every=1",
            "export.after_train=false",
            *lists[1],
            f"paths.output_root={root}",
            # The best_model faults need Recall@1 to improve after epoch 1 on these lists: it does
            # on the trajectory of Paddle's depthwise kernel (the matrix product's, the same
            # function up to float rounding, happens not to).
            "trainer.depthwise_matmul=false",
            f"mlflow.tracking_uri={store}",
            f"mlflow.experiment_name={experiment}",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory, lists, store):
    """The uninterrupted training run: (run dir, its MLflow metric history)."""
    root = tmp_path_factory.mktemp("reference")
    train.run(train_cfg(root, lists, store, "reference"), root / "run")
    run_id = checkpoint.load_state(root / "run" / "checkpoints" / "last")["mlflow_run_id"]
    return root / "run", history(MlflowClient(store), run_id)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, reference, store):
    out = tmp_path_factory.mktemp("exported") / "export"
    export.run(export_cfg(reference[0], out, store), out.parent / "stage")
    return out


def export_cfg(run_dir: Path, out: Path, store: str):
    return recog.compose(
        [
            "stage=export",
            f"model_path={run_dir / 'best_model'}",
            f"export.output_dir={out}",
            "export.cpu_onednn=off",
            "export.check_images=4",
            f"paths.output_root={out.parent}",
            f"mlflow.tracking_uri={store}",
            "trainer.device=cpu",
        ]
    )


def predict_cfg(root: Path, model_dir: Path, store: str, experiment: str, *extra):
    return recog.compose(
        [
            "stage=predict",
            f"predict.model_dir={model_dir}",
            f"paths.output_root={root}",
            f"mlflow.tracking_uri={store}",
            f"mlflow.experiment_name={experiment}",
            "trainer.device=cpu",
            *extra,
        ]
    )


def check_failed_training(client, run_dir, record, reference_history, error, path, words):
    """The failed save's message, the untouched checkpoints, the FAILED MLflow run with every metric
    logged before the failure."""
    message = str(error)
    assert isinstance(error, RecogError)
    assert f"could not write the checkpoint {path}: {words}" in message and "unchanged" in message
    for name, files in record["before"].items():
        assert tree(run_dir / name) == files, name  # byte for byte, nothing left behind
    run_id = checkpoint.load_state(run_dir / "checkpoints" / "last")["mlflow_run_id"]
    assert client.get_run(run_id).info.status == "FAILED"
    assert history(client, run_id) == upto(reference_history, record["epoch"] * STEPS)
    return run_id


def resume_to_the_end(cfg, run_dir, client, run_id, reference):
    train.run(cfg, run_dir)
    assert_same_tensors(run_dir / "checkpoints" / "last", reference[0] / "checkpoints" / "last")
    assert_same_tensors(run_dir / "best_model", reference[0] / "best_model", [checkpoint.MODEL_FILE])
    assert client.get_run(run_id).info.status == "FINISHED"
    assert history(client, run_id) == reference[1]
    assert leftovers(run_dir) == []


# ---------------------------------------------------------------- training


def test_disk_full_while_writing_checkpoints_last(tmp_path, monkeypatch, lists, store, reference):
    run_dir, last = tmp_path / "run", tmp_path / "run" / "checkpoints" / "last"
    record = fail_checkpoint_save(
        monkeypatch,
        run_dir,
        disk_full(".last.tmp-"),
        when=lambda path, state: path.name == "last" and state["epoch"] == 2,
    )
    with pytest.raises(StorageError) as error:
        train.run(train_cfg(tmp_path, lists, store, "disk_full"), run_dir)
    monkeypatch.undo()
    client = MlflowClient(store)
    run_id = check_failed_training(
        client, run_dir, record, reference[1], error.value, last, "No space left on device [ENOSPC]"
    )
    assert checkpoint.load_state(last)["epoch"] == 1  # the previous checkpoint, whole
    assert "free some disk space" in str(error.value)

    resume_to_the_end(train_cfg(tmp_path, lists, store, "disk_full", "resume=true"), run_dir, client, run_id, reference)


def test_permission_denied_while_writing_best_model(tmp_path, monkeypatch, lists, store, reference):
    run_dir, best = tmp_path / "run", tmp_path / "run" / "best_model"
    # the first best_model that replaces an earlier one (Recall@1 improved after epoch 1)
    record = fail_checkpoint_save(
        monkeypatch,
        run_dir,
        permission_denied(".best_model.tmp-"),
        when=lambda path, state: path.name == "best_model" and path.exists(),
    )
    with pytest.raises(StorageError) as error:
        train.run(train_cfg(tmp_path, lists, store, "permission_denied"), run_dir)
    monkeypatch.undo()
    assert record, "Recall@1 never improved after epoch 1: no best_model was replaced"
    client = MlflowClient(store)
    run_id = check_failed_training(
        client, run_dir, record, reference[1], error.value, best, "Permission denied [EACCES]"
    )
    assert checkpoint.load_state(best)["epoch"] < record["epoch"]
    assert f"check the permissions of {run_dir}" in str(error.value)

    resume_to_the_end(
        train_cfg(tmp_path, lists, store, "permission_denied", "resume=true"), run_dir, client, run_id, reference
    )


# ---------------------------------------------------------------- export and predict


def test_disk_full_while_exporting_keeps_the_previous_export(tmp_path, reference, store):
    out = tmp_path / "export"
    cfg = export_cfg(reference[0], out, store)
    export.run(cfg, tmp_path / "first")
    before = tree(out)
    client = MlflowClient(store)
    training_run = checkpoint.load_state(reference[0] / "best_model")["mlflow_run_id"]
    with disk_full(".export.tmp-"), pytest.raises(StorageError) as error:
        export.run(cfg, tmp_path / "second")
    message = str(error.value)
    assert f"could not write the export {out}: No space left on device [ENOSPC]" in message
    assert "previous export there is unchanged" in message
    assert tree(out) == before and leftovers(tmp_path) == []
    features = ExportedModel(out).predict(np.zeros((1, 3, 16, 16), np.float32))
    assert features.shape == (1, 32) and np.isfinite(features).all()
    # the export logs into the training run without touching its status or metrics
    assert client.get_run(training_run).info.status == "FINISHED"
    assert history(client, training_run) == reference[1]


def test_disk_full_while_writing_features_keeps_the_previous_features(tmp_path, lists, store, exported):
    out = tmp_path / "out"
    first = predict.run(
        predict_cfg(tmp_path, exported, store, "features_disk_full", f"predict.input={lists[0] / 'query.txt'}"), out
    )
    assert first["extracted"] == 30
    before = tree(out)
    with disk_full(".features.npy.tmp-"), pytest.raises(StorageError) as error:
        predict.run(
            predict_cfg(tmp_path, exported, store, "features_disk_full", f"predict.input={lists[0] / 'train.txt'}"), out
        )
    assert f"could not write the features file {out / 'features.npy'}: No space left on device" in str(error.value)
    assert tree(out) == before and leftovers(tmp_path) == []
    assert np.load(out / "features.npy").shape == (30, 32)
    assert len((out / "manifest.tsv").read_text().splitlines()) == 30  # still the pair of the first run
    client = MlflowClient(store)
    runs = client.search_runs(
        [client.get_experiment_by_name("features_disk_full").experiment_id], order_by=["attributes.start_time ASC"]
    )
    assert [run.info.status for run in runs] == ["FINISHED", "FAILED"]


def test_disk_full_while_saving_the_gallery_index_keeps_the_previous_index(tmp_path, lists, store, exported):
    root, index_dir = lists[0], tmp_path / "index"
    queries = [f"predict.input={root / 'query.txt'}", f"predict.index_dir={index_dir}"]
    predict.run(
        predict_cfg(tmp_path, exported, store, "index_disk_full", *queries, f"predict.gallery={root / 'gallery.txt'}"),
        tmp_path / "first",
    )
    before = tree(index_dir)
    with disk_full(".index.tmp-"), pytest.raises(StorageError) as error:  # 60 more images: the index grows
        predict.run(
            predict_cfg(
                tmp_path, exported, store, "index_disk_full", *queries, f"predict.gallery={root / 'train.txt'}"
            ),
            tmp_path / "second",
        )
    assert f"could not write the gallery index {index_dir}: No space left on device" in str(error.value)
    assert tree(index_dir) == before and leftovers(tmp_path) == []
    index = GalleryIndex.load(index_dir)
    assert index.ntotal == 20 and all("gallery_" in path for path in index.paths)


# ---------------------------------------------------------------- pictures


def test_disk_full_while_writing_the_training_picture_is_a_warning(tmp_path, lists, store, caplog):
    run_dir = tmp_path / "run"
    with disk_full(".retrieval.png.tmp-"), caplog.at_level("WARNING"):
        train.run(train_cfg(tmp_path, lists, store, "picture_disk_full", "trainer.epochs=2"), run_dir)
    assert "retrieval picture" in caplog.text and "No space left on device" in caplog.text
    assert not (run_dir / "retrieval.png").exists() and leftovers(run_dir) == []  # no truncated PNG
    assert checkpoint.load_state(run_dir / "checkpoints" / "last")["epoch"] == 2  # every epoch's checkpoint
    assert (run_dir / "best_model" / checkpoint.MODEL_FILE).is_file() and (run_dir / "metrics.json").is_file()


def test_disk_full_while_writing_the_predict_picture_is_a_warning(tmp_path, lists, store, exported, caplog):
    root, out = lists[0], tmp_path / "out"
    cfg = predict_cfg(
        tmp_path,
        exported,
        store,
        "predict_picture_disk_full",
        f"predict.input={root / 'query.txt'}",
        f"predict.gallery={root / 'gallery.txt'}",
    )
    with disk_full(".retrieval.png.tmp-"), caplog.at_level("WARNING"):
        summary = predict.run(cfg, out)
    assert "retrieval picture" in caplog.text and "No space left on device" in caplog.text
    assert not (out / "retrieval.png").exists() and leftovers(out) == []
    assert (out / "results.json").is_file() and (out / "metrics.json").is_file() and summary["extracted"] == 30
