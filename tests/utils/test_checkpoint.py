"""Checkpoints: safetensors + JSON + YAML, written atomically, loaded strictly."""

import recog  # noqa: F401  (sets up the runtime before paddle is imported)

# isort: split

import copy
import functools
import json
import os

import numpy as np
import paddle
import pytest
from omegaconf import OmegaConf
from safetensors.numpy import load_file

from recog.api import build_loss, build_model, build_optimizer, compose
from recog.errors import RecogError
from recog.utils import checkpoint, manifest
from recog.utils.checkpoint import load_model_weights, load_optimizer_state, save_checkpoint

pytestmark = [
    pytest.mark.filterwarnings("ignore:When training, we now always track global mean"),
    # Paddle's LinearWarmup keeps its inner schedule's state in the same dict and then warns about it
    pytest.mark.filterwarnings("ignore:There are some unused values in state_dict"),
]
FILES = {"model.safetensors", "optimizer.safetensors", "state.json", "config.yaml", "manifest.json"}


def _cfg(tmp_path, *extra, head=("head=fc", "head.class_num=3")):
    """The tiny config with ``paths.output_root=tmp_path`` (composed once per ``extra`` and ``head``:
    a composition costs more than most of these tests)."""
    cfg = copy.deepcopy(_composed(tuple(extra), tuple(head)))
    cfg.paths.output_root = str(tmp_path)  # what ${paths.output_root} (dataset.root) resolves to
    return cfg


@functools.cache
def _composed(extra, head):
    return compose(
        [
            "backbone.scale=0.25",
            "backbone.dropout_prob=0.0",
            "data.image_size=32",
            "neck.embedding_size=8",
            *head,
            "loss=ce",
            "optimizer=momentum",
            "optimizer.lr=0.1",
            "scheduler=warmup_cosine",
            "scheduler.warmup_epochs=0.5",
            "trainer.epochs=2",
            *extra,
        ]
    )


def _model(cfg, seed):
    paddle.seed(seed)
    return build_model(cfg)


def _state(model):
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


IMAGES = np.random.default_rng(0).standard_normal((6, 3, 32, 32)).astype("float32")
LABELS = np.array([0, 0, 1, 1, 2, 2], dtype="int64")


def _train_step(model, loss_fn, optimizer, schedule, shift=0.0):
    model.train()
    labels = paddle.to_tensor(LABELS)
    loss_fn(model(paddle.to_tensor(IMAGES + shift), labels), labels)["loss"].backward()
    optimizer.step()
    optimizer.clear_grad()
    schedule.step()


def test_model_round_trip(tmp_path):
    cfg = _cfg(tmp_path)
    saved, other = _model(cfg, 1), _model(cfg, 2)
    _train_step(saved, build_loss(cfg), *build_optimizer(cfg, saved.parameters(), 4))  # BN statistics move too
    expected = _state(saved)
    assert any(not np.array_equal(v, _state(other)[k]) for k, v in expected.items())

    path = save_checkpoint(tmp_path / "ckpt", saved, cfg, {"epoch": 1, "step": 0})
    assert path == tmp_path / "ckpt"
    load_model_weights(path, other)
    loaded = _state(other)
    assert set(loaded) == set(expected)
    for k, v in expected.items():
        assert loaded[k].dtype == v.dtype
        np.testing.assert_array_equal(loaded[k], v, err_msg=k)
    saved.eval(), other.eval()
    x = paddle.to_tensor(IMAGES)
    np.testing.assert_array_equal(saved(x)["features"].numpy(), other(x)["features"].numpy())


def _fresh_process(cfg, seed):
    """Model, loss, optimizer and schedule named as a new Python process would name them."""
    model = _model(cfg, seed)
    optimizer, schedule = build_optimizer(cfg, model.parameters(), steps_per_epoch=4)
    return model, build_loss(cfg), optimizer, schedule


def test_optimizer_round_trip_resumes_exactly(tmp_path):
    cfg = _cfg(tmp_path)
    with paddle.utils.unique_name.guard():  # the interrupted run
        model, loss_fn, optimizer, schedule = _fresh_process(cfg, 1)
        for i in range(3):
            _train_step(model, loss_fn, optimizer, schedule, shift=0.1 * i)
        save_checkpoint(tmp_path / "last", model, cfg, {"epoch": 0, "step": 3}, optimizer)
        _train_step(model, loss_fn, optimizer, schedule, shift=0.5)
        uninterrupted, lr_after = _state(model), optimizer.get_lr()

    with paddle.utils.unique_name.guard():  # resume in a new process
        model, loss_fn, optimizer, schedule = _fresh_process(cfg, 2)
        load_model_weights(tmp_path / "last", model)
        load_optimizer_state(tmp_path / "last", optimizer, model)
        _train_step(model, loss_fn, optimizer, schedule, shift=0.5)
        resumed = _state(model)
    assert optimizer.get_lr() == pytest.approx(lr_after)  # the schedule position came back
    for k, v in uninterrupted.items():
        np.testing.assert_allclose(resumed[k], v, rtol=1e-6, atol=1e-7, err_msg=k)

    with paddle.utils.unique_name.guard():  # control: weights only, no momentum -> a different step
        model, loss_fn, optimizer, schedule = _fresh_process(cfg, 2)
        load_model_weights(tmp_path / "last", model)
        optimizer.set_state_dict(
            {"LR_Scheduler": checkpoint.load_state(tmp_path / "last")["optimizer"]["LR_Scheduler"]}
        )
        _train_step(model, loss_fn, optimizer, schedule, shift=0.5)
        without_velocity = _state(model)
    assert not np.allclose(without_velocity["neck.fc.weight"], uninterrupted["neck.fc.weight"], rtol=1e-4, atol=1e-6)


def test_optimizer_state_loads_into_a_model_built_later_in_the_same_process(tmp_path):
    # Paddle names parameters process-wide (linear_0.w_0, linear_1.w_0, ...): a model built again in
    # the same process (resume from the Python API) has other names; checkpoints must not depend on them.
    cfg = _cfg(tmp_path)
    model, loss_fn, optimizer, schedule = _fresh_process(cfg, 1)
    _train_step(model, loss_fn, optimizer, schedule)
    save_checkpoint(tmp_path / "last", model, cfg, {"epoch": 0, "step": 0}, optimizer)
    _train_step(model, loss_fn, optimizer, schedule, shift=0.5)
    uninterrupted = _state(model)
    model, loss_fn, optimizer, schedule = _fresh_process(cfg, 1)
    load_model_weights(tmp_path / "last", model)
    load_optimizer_state(tmp_path / "last", optimizer, model)
    _train_step(model, loss_fn, optimizer, schedule, shift=0.5)
    for k, v in uninterrupted.items():
        np.testing.assert_allclose(_state(model)[k], v, rtol=1e-6, atol=1e-7, err_msg=k)


def test_files_config_and_state(tmp_path):
    cfg = _cfg(tmp_path)
    model = _model(cfg, 1)
    optimizer, schedule = build_optimizer(cfg, model.parameters(), steps_per_epoch=4)
    _train_step(model, build_loss(cfg), optimizer, schedule)
    _train_step(model, build_loss(cfg), optimizer, schedule)
    state = {
        "epoch": 3,
        "step": 12,
        "best": {"recall_at_1": np.float32(0.5), "epoch": 2},
        "mlflow_run_id": "abc123",
        "finished": False,
    }
    path = save_checkpoint(tmp_path / "runs" / "x" / "last", model, cfg, state, optimizer)
    assert {f.name for f in path.iterdir()} == FILES

    stored = json.loads((path / "state.json").read_text())
    assert {k: stored[k] for k in state} == {**state, "best": {"recall_at_1": 0.5, "epoch": 2}}
    assert stored["optimizer"]["LR_Scheduler"]["last_epoch"] == 2  # schedule position, as JSON
    assert checkpoint.load_state(path) == stored
    assert state["best"]["recall_at_1"] == np.float32(0.5) and "optimizer" not in state  # input untouched

    text = (path / "config.yaml").read_text()
    assert "${" not in text  # resolved
    loaded = checkpoint.load_config(path)
    assert OmegaConf.to_container(loaded) == OmegaConf.to_container(cfg, resolve=True)
    assert loaded.dataset.root == f"{tmp_path}/data/digits"
    assert loaded.neck.embedding_size == 8 and loaded.head.class_num == 3


def test_files_are_safetensors_not_pickle(tmp_path):
    cfg = _cfg(tmp_path)
    model = _model(cfg, 1)
    optimizer, schedule = build_optimizer(cfg, model.parameters(), steps_per_epoch=4)
    _train_step(model, build_loss(cfg), optimizer, schedule)
    path = save_checkpoint(tmp_path / "ckpt", model, cfg, {}, optimizer)
    for name in ("model.safetensors", "optimizer.safetensors"):
        raw = (path / name).read_bytes()
        header = int.from_bytes(raw[:8], "little")
        assert raw[8:9] == b"{" and json.loads(raw[8 : 8 + header])  # safetensors: u64 length + JSON header
        assert not raw.startswith((b"\x80", b"PK"))  # neither a pickle nor a zip (paddle.save / torch.save)
    weights = load_file(str(path / "model.safetensors"))
    assert set(weights) == set(model.state_dict())
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(weights[k], v.numpy())
    velocities = load_file(str(path / "optimizer.safetensors"))
    assert velocities and all("velocity" in k for k in velocities)
    assert len(velocities) == len([p for p in model.parameters() if not p.stop_gradient])  # BN statistics have none
    assert any(np.abs(v).sum() > 0 for v in velocities.values())


def test_without_optimizer(tmp_path):
    cfg = _cfg(tmp_path)
    path = save_checkpoint(tmp_path / "best_model", _model(cfg, 1), cfg, {"epoch": 1, "step": 0})
    assert {f.name for f in path.iterdir()} == FILES - {"optimizer.safetensors"}
    assert "optimizer" not in checkpoint.load_state(path)


def test_saving_again_replaces_atomically(tmp_path):
    cfg = _cfg(tmp_path)
    first, second = _model(cfg, 1), _model(cfg, 2)
    parent = tmp_path / "run" / "checkpoints"
    save_checkpoint(parent / "last", first, cfg, {"epoch": 1, "step": 0})
    save_checkpoint(parent / "last", second, cfg, {"epoch": 2, "step": 0})
    assert os.listdir(parent) == ["last"]  # no temp or .old directories left behind
    assert {f.name for f in (parent / "last").iterdir()} == FILES - {"optimizer.safetensors"}
    assert checkpoint.load_state(parent / "last")["epoch"] == 2
    weights = load_file(str(parent / "last" / "model.safetensors"))
    for k, v in _state(second).items():
        np.testing.assert_array_equal(weights[k], v)


def test_failed_save_keeps_the_previous_checkpoint(tmp_path):
    cfg = _cfg(tmp_path)
    model = _model(cfg, 1)
    path = save_checkpoint(tmp_path / "last", model, cfg, {"epoch": 1, "step": 0})
    before = {f.name: f.read_bytes() for f in path.iterdir()}
    with pytest.raises(TypeError):  # fails after the weights were written to the temp directory
        save_checkpoint(tmp_path / "last", _model(cfg, 2), cfg, {"epoch": 2, "bad": object()})
    assert os.listdir(tmp_path) == ["last"]
    assert {f.name: f.read_bytes() for f in path.iterdir()} == before


def test_load_into_a_different_shape_names_the_mismatch(tmp_path):
    cfg = _cfg(tmp_path)
    path = save_checkpoint(tmp_path / "ckpt", _model(cfg, 1), cfg, {})
    wider = _model(_cfg(tmp_path, "neck.embedding_size=16"), 2)
    untouched = _state(wider)
    with pytest.raises(RecogError) as error:
        load_model_weights(path, wider)
    message = str(error.value)
    assert "neck.fc.weight" in message and "head.fc.weight" in message and "shape mismatch" in message
    assert "model.safetensors" in message
    for k, v in _state(wider).items():  # nothing was loaded
        np.testing.assert_array_equal(v, untouched[k])


def test_load_into_a_different_architecture_names_missing_keys(tmp_path):
    cfg = _cfg(tmp_path)
    path = save_checkpoint(tmp_path / "ckpt", _model(cfg, 1), cfg, {})
    headless = _model(_cfg(tmp_path, head=["head=none"]), 2)
    with pytest.raises(RecogError, match=r"unexpected \['head\.fc\.bias', 'head\.fc\.weight'\]"):
        load_model_weights(path, headless)
    with_arc = _model(_cfg(tmp_path, head=["head=arcmargin", "head.class_num=3"]), 2)
    with pytest.raises(RecogError, match=r"missing \['head\.weight'\]"):
        load_model_weights(path, with_arc)


def test_missing_directory(tmp_path):
    model = _model(_cfg(tmp_path), 1)
    with pytest.raises(RecogError, match="nowhere"):
        load_model_weights(tmp_path / "nowhere", model)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecogError, match="model.safetensors"):
        load_model_weights(tmp_path / "empty", model)


def test_killed_mid_swap_the_previous_checkpoint_is_read_and_put_back(tmp_path):
    cfg = _cfg(tmp_path)
    saved = _model(cfg, 1)
    parent = tmp_path / "checkpoints"
    save_checkpoint(parent / "last", saved, cfg, {"epoch": 1, "step": 0})
    # What a process killed between the two renames of the fallback swap leaves (no renameat2):
    # the previous version moved aside, and the new one unfinished in a temp directory.
    os.replace(parent / "last", parent / ".last.old")
    (parent / ".last.tmp-999999999-abcdef").mkdir()
    (parent / ".last.tmp-999999999-abcdef" / "model.safetensors").write_bytes(b"\x10\x00")
    assert checkpoint.has_checkpoint(parent / "last") and checkpoint.load_state(parent / "last")["epoch"] == 1
    loaded = _model(cfg, 2)
    load_model_weights(parent / "last", loaded)
    for k, v in _state(saved).items():
        np.testing.assert_array_equal(_state(loaded)[k], v, err_msg=k)
    save_checkpoint(parent / "last", _model(cfg, 3), cfg, {"epoch": 2, "step": 0})  # tidies up, then saves
    assert os.listdir(parent) == ["last"] and checkpoint.load_state(parent / "last")["epoch"] == 2


def test_disk_full_keeps_the_previous_checkpoint_and_names_it(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    path = save_checkpoint(tmp_path / "last", _model(cfg, 1), cfg, {"epoch": 1, "step": 0})
    before = {f.name: f.read_bytes() for f in path.iterdir()}

    def full(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(
        RecogError,
        match=rf"could not write the checkpoint {path}: No space left on device "
        r"\[ENOSPC\] at .*model\.safetensors; the previous checkpoint there "
        r"is unchanged",
    ):
        save_checkpoint(path, _model(cfg, 2), cfg, {"epoch": 2, "step": 0})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["last"]
    assert {f.name: f.read_bytes() for f in path.iterdir()} == before


# ---- integrity: manifest.json, tampering, legacy folders -------------------------------------
def _saved(tmp_path, with_optimizer=True):
    cfg = _cfg(tmp_path)
    model = _model(cfg, 1)
    optimizer = build_optimizer(cfg, model.parameters(), 4)[0] if with_optimizer else None
    path = save_checkpoint(tmp_path / "last", model, cfg, {"epoch": 1, "step": 4, "mlflow_run_id": None}, optimizer)
    return path, cfg, model, optimizer


def _load_everything(path, cfg):
    """What resuming reads: the state, the weights, the optimizer, the config."""
    state = checkpoint.load_state(path)
    model = _model(cfg, 2)
    load_model_weights(path, model)
    optimizer = build_optimizer(cfg, model.parameters(), 4)[0]
    load_optimizer_state(path, optimizer, model)
    return state, checkpoint.load_config(path)


def test_the_manifest_lists_every_file_with_size_and_sha256(tmp_path):
    import hashlib

    path, _, _, _ = _saved(tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == "recog-manifest" and manifest["kind"] == "checkpoint"
    assert manifest["format_version"] == 1 and manifest["recog_version"]
    assert set(manifest["files"]) == FILES - {"manifest.json"}
    for name, entry in manifest["files"].items():
        data = (path / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _truncate(file, count=64):
    file.write_bytes(file.read_bytes()[:-count])


def _alter(file):
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01
    file.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "name, damage, message",
    [
        ("model.safetensors", _truncate, r"model.safetensors is truncated \(\d+ bytes, manifest.json says \d+\)"),
        ("model.safetensors", _alter, "model.safetensors was altered"),
        ("optimizer.safetensors", lambda f: f.unlink(), "optimizer.safetensors is missing"),
        (
            "state.json",
            lambda f: f.write_text("{not json"),
            "state.json is truncated|state.json is longer|state.json was",
        ),
        ("state.json", lambda f: f.write_text("{}"), "state.json is truncated"),
        ("config.yaml", _alter, "config.yaml was altered"),
    ],
)
def test_a_damaged_checkpoint_is_an_error_naming_the_file(tmp_path, name, damage, message):
    path, cfg, _, _ = _saved(tmp_path)
    damage(path / name)
    with pytest.raises(checkpoint.IntegrityError, match=message) as error:
        _load_everything(path, cfg)
    assert str(path / name) in str(error.value) and "copy the checkpoint again" in str(error.value)


def test_a_file_added_after_saving_or_a_bad_manifest_is_refused(tmp_path):
    path, cfg, _, _ = _saved(tmp_path)
    (path / "loss.safetensors").write_bytes(b"not written by recog")
    loss = build_loss(_cfg(tmp_path, "loss=ce_center"), class_num=3, embedding_size=8)
    with pytest.raises(checkpoint.IntegrityError, match="loss.safetensors is not listed in"):
        checkpoint.load_loss_state(path, loss)
    (path / "manifest.json").write_text(
        json.dumps({"format": "recog-manifest", "format_version": "1", "kind": "checkpoint", "files": {}})
    )
    with pytest.raises(checkpoint.IntegrityError, match="format_version must be an integer, got str"):
        checkpoint.load_state(path)
    (path / "manifest.json").write_text("[]")
    with pytest.raises(checkpoint.IntegrityError, match="must hold a JSON object"):
        checkpoint.load_state(path)


@pytest.mark.parametrize(
    "add, name",
    [
        (lambda d: (d / "extra.py").write_text("print('not from recog')"), "extra.py"),
        (lambda d: (d / "notes").mkdir(), "notes"),
        (lambda d: (d / "link").symlink_to(d / "model.safetensors"), "link"),
    ],
)
def test_anything_added_to_a_checkpoint_is_detected_by_every_loader(tmp_path, add, name):
    """As for an export: each reader checks the folder holds nothing its manifest does not list."""
    path, cfg, _, _ = _saved(tmp_path)
    add(path)
    for load in (checkpoint.load_state, checkpoint.load_config, lambda p: load_model_weights(p, _model(cfg, 2))):
        with pytest.raises(checkpoint.IntegrityError, match=f"{name} is not listed in .*manifest.json: it was added"):
            load(path)


def test_a_deeply_nested_manifest_or_state_is_a_message(tmp_path):
    path, _, _, _ = _saved(tmp_path)
    (path / "manifest.json").write_text("[" * 100000 + "]" * 100000)  # the probe's 100,000-deep manifest
    with pytest.raises(checkpoint.IntegrityError, match="manifest.json nests deeper than 64 levels"):
        checkpoint.load_state(path)
    (path / "manifest.json").unlink()
    (path / "state.json").write_text('{"epoch": ' + "[" * 70 + "]" * 70 + "}")
    with pytest.raises(checkpoint.IntegrityError, match="state.json nests deeper than 64 levels"):
        checkpoint.load_state(path)


def test_an_optimizer_state_that_does_not_fit_is_a_message(tmp_path):
    path, cfg, _, _ = _saved(tmp_path)
    state = json.loads((path / "state.json").read_text())
    state["optimizer"] = {"LR_Scheduler": {"last_epoch": 1, "last_lr": "zzz"}}
    (path / "state.json").write_text(json.dumps(state))
    manifest.write_manifest(path, "checkpoint")  # edited, with a matching manifest
    model = _model(cfg, 2)
    optimizer = build_optimizer(cfg, model.parameters(), 4)[0]
    with pytest.raises(checkpoint.IntegrityError, match="state.json: its optimizer state does not fit"):
        load_optimizer_state(path, optimizer, model)


def test_a_checkpoint_without_a_manifest_loads_with_a_warning(tmp_path, caplog):
    path, cfg, saved, _ = _saved(tmp_path)
    (path / "manifest.json").unlink()  # as written before manifests existed
    state, _ = _load_everything(path, cfg)
    assert state["epoch"] == 1 and "has no manifest.json" in caplog.text and "unverified" in caplog.text
    loaded = _model(cfg, 3)
    load_model_weights(path, loaded)
    assert all(np.array_equal(v, _state(saved)[k]) for k, v in _state(loaded).items())


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: _truncate(p / "model.safetensors", 4096), "model.safetensors is not a readable safetensors file"),
        (lambda p: (p / "state.json").write_text("garbage"), "state.json is not valid JSON"),
        (lambda p: (p / "state.json").write_text("{}"), "state.json lacks epoch, step"),
        (lambda p: (p / "state.json").write_text('{"epoch": 1, "step": 0}'), "state.json lacks optimizer"),
        (lambda p: (p / "state.json").write_text('{"epoch": "1", "step": 0}'), "epoch must be an integer, got str"),
        (lambda p: (p / "state.json").write_text('{"epoch": 1, "step": true}'), "step must be an integer, got bool"),
        (
            lambda p: (p / "state.json").write_text('{"epoch": 1, "step": 0, "best": [1]}'),
            "best must be an object or null",
        ),
        (lambda p: (p / "optimizer.safetensors").unlink(), "optimizer.safetensors is missing"),
    ],
)
def test_a_damaged_legacy_checkpoint_is_an_error_not_a_traceback(tmp_path, damage, message):
    path, cfg, _, _ = _saved(tmp_path)
    (path / "manifest.json").unlink()
    damage(path)
    with pytest.raises(checkpoint.IntegrityError, match=message):
        _load_everything(path, cfg)
