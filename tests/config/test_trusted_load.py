"""Loading a model folder never runs what its config.yaml names: each hostile config is refused,
before anything is imported or called, with one message naming the file, the key and the value,
through stage=eval (in-process) and through the Python API; a marker the payload would create
never appears. Old-layout folders still load; trusted_targets is the one documented way around."""

import recog  # noqa: F401  (sets up the runtime before paddle is imported)

# isort: split

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest
import yaml

from recog.api import build_loss, build_model, compose, load_model
from recog.errors import ConfigError
from recog.stages import evaluate
from recog.utils import checkpoint

TINY = ["backbone.scale=0.25", "data.image_size=32", "neck.embedding_size=8", "head=fc", "head.class_num=3"]


class _Payload:
    """Unpickling this calls os.system(command): what a booby-trapped .pdparams does."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A real tiny model folder (model.safetensors, config.yaml, state.json) and its config as a dict."""
    root = tmp_path_factory.mktemp("trusted")
    cfg = compose(TINY + [f"paths.output_root={root}"])
    paddle.seed(0)
    model = build_model(cfg)
    folder = checkpoint.save_checkpoint(root / "best_model", model, cfg, {"epoch": 1})
    return folder, yaml.safe_load((folder / checkpoint.CONFIG_FILE).read_text())


def _hostile_folder(saved, tmp_path, edit):
    """A copy of the saved folder whose config.yaml ``edit(tree, marker)`` made hostile."""
    folder, tree = saved
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil_model"
    evil.mkdir()
    (evil / checkpoint.MODEL_FILE).write_bytes((folder / checkpoint.MODEL_FILE).read_bytes())
    (evil / checkpoint.STATE_FILE).write_bytes((folder / checkpoint.STATE_FILE).read_bytes())
    tree = yaml.safe_load(yaml.safe_dump(tree))
    edit(tree, marker, tmp_path)
    text = yaml.safe_dump(tree) if isinstance(tree, dict) else tree
    (evil / checkpoint.CONFIG_FILE).write_text(text)
    return evil, marker


def _set(tree, key, value):
    *parents, last = key.split(".")
    node = tree
    for part in parents:
        node = node[part]
    node[last] = value


def _pickle_bomb(marker, tmp_path):
    path = tmp_path / "evil.pdparams"
    path.write_bytes(pickle.dumps(_Payload(f"touch {marker}"), protocol=2))
    return str(path)


# (id, edit(tree, marker, tmp_path), the key the message must name, a fragment of the value)
HOSTILE = [
    (
        "os.system",
        lambda t, m, d: _set(t, "backbone", {"_target_": "os.system", "command": f"touch {m}"}),
        "backbone._target_",
        "os.system",
    ),
    (
        "subprocess.Popen",
        lambda t, m, d: _set(t, "neck", {"_target_": "subprocess.Popen", "args": ["touch", str(m)]}),
        "neck._target_",
        "subprocess.Popen",
    ),
    (
        "builtins.eval",
        lambda t, m, d: _set(
            t, "head", {"_target_": "builtins.eval", "source": f"__import__('os').system('touch {m}')"}
        ),
        "head._target_",
        "builtins.eval",
    ),
    (
        "paddle.load",
        lambda t, m, d: _set(t, "backbone", {"_target_": "paddle.load", "path": _pickle_bomb(m, d)}),
        "backbone._target_",
        "paddle.load",
    ),
    (
        "distutils.spawn",
        lambda t, m, d: _set(t, "backbone", {"_target_": "distutils.spawn.spawn", "cmd": ["touch", str(m)]}),
        "backbone._target_",
        "distutils.spawn.spawn",
    ),
    (
        "loss fn",
        lambda t, m, d: _set(t, "loss.ce.fn", {"_target_": "os.system", "command": f"touch {m}"}),
        "loss.ce.fn._target_",
        "os.system",
    ),
    (
        "a recog class in the wrong group",
        lambda t, m, d: _set(t, "head._target_", "recog.models.backbones.PPLCNet"),
        "head._target_",
        "recog.models.backbones.PPLCNet",
    ),
    (
        "nested in a head argument",
        lambda t, m, d: _set(t, "head.class_num", {"_target_": "os.system", "command": f"touch {m}"}),
        "head.class_num._target_",
        "os.system",
    ),
    (
        "nested registered loss where none is declared",
        lambda t, m, d: _set(t, "head.class_num", {"_target_": "recog.losses.CELoss"}),
        "head.class_num._target_",
        "recog.losses.CELoss",
    ),
    (
        "target outside a component",
        lambda t, m, d: _set(t, "data.mean", {"_target_": "os.system", "command": f"touch {m}"}),
        "data.mean._target_",
        "os.system",
    ),
    ("_args_", lambda t, m, d: _set(t, "backbone._args_", [f"touch {m}"]), "backbone._args_", "touch"),
    ("_partial_", lambda t, m, d: _set(t, "backbone._partial_", True), "backbone._partial_", "True"),
    ("_call_", lambda t, m, d: _set(t, "head._call_", False), "head._call_", "False"),
    ("_recursive_", lambda t, m, d: _set(t, "neck._recursive_", False), "neck._recursive_", "False"),
    (
        "oc.env",
        lambda t, m, d: _set(t, "backbone.stop_layer", "${oc.env:HOME}"),
        "backbone.stop_layer",
        "${oc.env:HOME}",
    ),
    (
        "interpolation",
        lambda t, m, d: _set(t, "data.image_size", "${trainer.epochs}"),
        "data.image_size",
        "${trainer.epochs}",
    ),
    ("python tag", lambda t, m, d: None, "", ""),  # replaced below: a YAML python/object tag
    (
        "saved trust is ignored",
        lambda t, m, d: (
            _set(t, "trusted_targets", ["os.system"]),
            _set(t, "backbone", {"_target_": "os.system", "command": f"touch {m}"}),
        ),
        "backbone._target_",
        "os.system",
    ),
]


def _edit_for(case):
    name, edit, key, value = case
    if name != "python tag":
        return edit, key, value

    def tagged(tree, marker, tmp_path):
        tree.clear()
        tree.update({"x": 1})

    return tagged, None, None


@pytest.mark.parametrize("case", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_config_is_refused_by_eval_and_api(case, saved, tmp_path, monkeypatch):
    edit, key, value = _edit_for(case)
    evil, marker = _hostile_folder(saved, tmp_path, edit)
    config_file = evil / checkpoint.CONFIG_FILE
    if key is None:  # PyYAML's python tags: only a full loader would build them
        config_file.write_text(f"backbone: !!python/object/apply:os.system ['touch {marker}']\n")
        key, value = "", "python/object/apply:os.system"
    monkeypatch.chdir(tmp_path)  # a relative payload would land here
    modules_before = set(sys.modules)

    cfg = compose(
        ["stage=eval", f"model_path={evil}", f"paths.output_root={tmp_path / 'out'}", "mlflow.enabled=false"] + TINY
    )
    with pytest.raises(ConfigError) as from_eval:
        evaluate.run(cfg, tmp_path / "run")
    with pytest.raises(ConfigError) as from_api:
        load_model(evil)
    for error in (from_eval.value, from_api.value):
        message = str(error)
        assert str(config_file) in message, message
        assert key in message and value in message, message
        assert "\n" not in message
    assert not marker.exists()
    assert not list(tmp_path.rglob("pwned"))
    assert not {"distutils.spawn", "subprocess"} & (set(sys.modules) - modules_before)


def test_good_folder_loads_and_gives_the_same_features(saved):
    folder, _ = saved
    model = load_model(folder)
    reference = build_model(compose(TINY))
    checkpoint.load_model_weights(folder, reference)
    reference.eval()
    images = paddle.to_tensor(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype("float32"))
    np.testing.assert_array_equal(model(images)["features"].numpy(), reference(images)["features"].numpy())


def test_saved_pretrained_path_is_not_read(saved, tmp_path):
    evil, marker = _hostile_folder(saved, tmp_path, lambda t, m, d: _set(t, "backbone.pretrained", _pickle_bomb(m, d)))
    cfg = checkpoint.load_config(evil)
    assert cfg.backbone.pretrained is None  # the weights come from model.safetensors
    load_model(evil)
    assert not marker.exists()


# ---- the documented ways a user's own component loads -----------------------------------------------
USER_NECK = """
from paddle import nn


class HalfNeck(nn.Layer):
    def __init__(self, in_channels: int, embedding_size: int = 8):
        super().__init__()
        self.embedding_size = embedding_size
        self.fc = nn.Linear(in_channels, embedding_size)

    def forward(self, x):
        return self.fc(x) * 0.5
"""


@pytest.fixture()
def user_neck_folder(saved, tmp_path, monkeypatch):
    module = f"user_neck_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(USER_NECK)
    monkeypatch.syspath_prepend(str(tmp_path))
    target = f"{module}.HalfNeck"
    folder, marker = _hostile_folder(
        saved, tmp_path, lambda t, m, d: _set(t, "neck", {"_target_": target, "embedding_size": 8})
    )
    yield folder, target, module, tmp_path
    sys.modules.pop(module, None)


def test_unregistered_user_component_needs_registration_or_trust(user_neck_folder):
    folder, target, module, tmp_path = user_neck_folder
    with pytest.raises(ConfigError, match=rf"neck\._target_='{target}'.*trusted_targets=\[{target}\]"):
        load_model(folder)
    assert module not in sys.modules  # refused before the import

    # 1. the documented opt-in, named on the command line (compose), reaches stage=eval's loader
    cfg = compose(["stage=eval", f"model_path={folder}", f"trusted_targets=[{target}]"] + TINY)
    trained = checkpoint.load_config(folder, trusted_targets=cfg.trusted_targets)
    assert type(build_model(trained).neck).__name__ == "HalfNeck"
    assert type(load_model(folder, trusted_targets=[target]).neck).__name__ == "HalfNeck"

    # 2. registered the documented way: a yaml on hydra.searchpath
    (tmp_path / "conf" / "neck").mkdir(parents=True)
    (tmp_path / "conf" / "neck" / "half.yaml").write_text(f"_target_: {target}\nembedding_size: 8\n")
    searchpath = f"file://{tmp_path / 'conf'}"
    assert type(load_model(folder, searchpath=[searchpath]).neck).__name__ == "HalfNeck"
    compose([f"hydra.searchpath=[{searchpath}]"])  # stage=eval reads the searchpath of the composition
    assert type(build_model(checkpoint.load_config(folder)).neck).__name__ == "HalfNeck"
    compose([])
    with pytest.raises(ConfigError, match="not a registered neck"):
        checkpoint.load_config(folder)


# ---- folders saved by older recog ----------------------------------------------------------------------
OLD_CONFIG = """
stage: train
seed: 0
model_path: null
resume: false
backbone:
  _target_: recog.models.backbones.PPLCNet
  scale: 0.25
  dropout_prob: 0.2
  stop_layer: flatten
  pretrained: null
neck:
  _target_: recog.models.necks.FCNeck
  embedding_size: 8
head:
  _target_: recog.models.heads.FCHead
  class_num: 3
loss:
  ce:
    _target_: recog.losses.CELoss
    weight: 1.0
    input: logits
    epsilon: null
  triplet:
    _target_: recog.losses.TripletLossV2
    weight: 0.5
    input: features
    margin: 0.3
    normalize_feature: true
  xbm:
    _target_: recog.losses.XBM
    weight: 1.0
    input: features
    loss:
      _target_: recog.losses.ContrastiveLoss
      margin: 0.5
    memory_size: 64
    feat_dim: 8
    start_iteration: 0
    memory_weight: 1.0
dataset:
  _target_: recog.data.digits.load_digits
  root: outputs/data/digits
  mirror_invariant: false
optimizer:
  _target_: recog.optim.momentum
  lr: 0.05
  momentum: 0.9
  weight_decay: 0.0005
  nesterov: false
lr:
  _target_: recog.optim.warmup_cosine
  warmup_epochs: 1.0
  warmup_start_lr: 0.0
  eta_min: 0.0
data:
  image_size: 32
  batch_size: 40
  samples_per_class: 8
  eval_batch_size: 128
  num_workers: 2
  mean: [0.485, 0.456, 0.406]
  std: [0.229, 0.224, 0.225]
trainer:
  epochs: 8
  device: auto
"""


def test_old_layout_folder_loads(saved, tmp_path):
    folder, _ = saved
    old = tmp_path / "old_model"
    old.mkdir()
    (old / checkpoint.MODEL_FILE).write_bytes((folder / checkpoint.MODEL_FILE).read_bytes())
    (old / checkpoint.CONFIG_FILE).write_text(OLD_CONFIG)
    cfg = checkpoint.load_config(old)
    assert "lr" not in cfg and cfg.scheduler._target_ == "recog.optim.warmup_cosine"
    assert cfg.loss.triplet == {
        "weight": 0.5,
        "input": "features",
        "fn": {"_target_": "recog.losses.TripletLossV2", "margin": 0.3, "normalize_feature": True},
    }
    assert cfg.loss.xbm.fn.loss._target_ == "recog.losses.ContrastiveLoss"
    loss_fn = build_loss(cfg)
    assert loss_fn.weights == {"ce": 1.0, "triplet": 0.5, "xbm": 1.0} and loss_fn.terms["triplet"].margin == 0.3
    model = load_model(old)
    assert model.embedding_size == 8

    hostile = OLD_CONFIG.replace("_target_: recog.losses.ContrastiveLoss", "_target_: os.system")
    (old / checkpoint.CONFIG_FILE).write_text(hostile)
    with pytest.raises(ConfigError, match=r"loss\.xbm\.fn\.loss\._target_='os\.system'"):
        checkpoint.load_config(old)


def test_checkpoint_reader_is_the_only_config_reader():
    """Every stage reads a saved config through checkpoint.load_config (which checks it)."""
    root = Path(__file__).resolve().parents[2] / "recog"
    readers = [
        p for p in root.rglob("*.py") if "OmegaConf.load" in p.read_text() and p.name != "sweep_parent.py"
    ]  # the sweep parent reads its own results file
    assert readers == []
    users = {p.relative_to(root).as_posix() for p in root.rglob("*.py") if "load_config(" in p.read_text()}
    assert {"stages/evaluate.py", "stages/export.py", "api.py"} <= users


def test_saved_arguments_are_checked_against_the_constructor(saved, tmp_path):
    evil, _ = _hostile_folder(saved, tmp_path, lambda t, m, d: _set(t, "backbone.scael", 1.0))
    with pytest.raises(ConfigError) as error:
        load_model(evil)
    message = str(error.value)
    assert (
        str(evil / checkpoint.CONFIG_FILE) in message and "'scael'" in message and "valid keys in backbone" in message
    )


# ---- YAML that is valid but not plain data, or expands without bound ------------------------------
_LAUGHS = "lol0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10)
)  # 3 KB that expands to 9^10 strings
RAW_HOSTILE = [
    ("a date", lambda text: text.replace("seed: 0", "seed: 2001-12-14"), "seed=datetime.date(2001, 12, 14)"),
    ("!!set", lambda text: text + "extra: !!set {a, b}\n", "extra="),
    ("!!binary", lambda text: text + "extra: !!binary aGVsbG8=\n", "extra=b'hello'"),
    ("a null key", lambda text: text + "~: 1\n", "the key None is refused"),
    ("20,000-deep nesting", lambda text: text + "deep: " + "[" * 20000 + "]" * 20000 + "\n", "deeper than 64 levels"),
    ("a self-referencing anchor", lambda text: text + "loop: &x [*x]\n", "uses a YAML anchor or alias"),
    ("billion laughs", lambda text: text + _LAUGHS, "uses a YAML anchor or alias"),
    ("over 1 MiB", lambda text: text + "#" * (1 << 20) + "\n", "is over 1024 KiB"),
    (
        "a 512 GB embedding",
        lambda text: text.replace("embedding_size: 8", "embedding_size: 100000000000"),
        "neck.embedding_size=100000000000 is refused: a size must be a whole number in 1..2147483647",
    ),
    ("no class count", lambda text: text.replace("class_num: 3", "class_num: null"), "head.class_num is null"),
]


@pytest.mark.parametrize("edit, message", [c[1:] for c in RAW_HOSTILE], ids=[c[0] for c in RAW_HOSTILE])
def test_yaml_beyond_plain_data_is_a_message_not_a_traceback(saved, tmp_path, edit, message):
    """The probe's saved configs: tracebacks (a date, !!set, a null key, deep nesting, a self-referencing
    anchor, a 512 GB allocation) or minutes of growing memory (nested anchors)."""
    folder, _ = saved
    evil = tmp_path / "model"
    evil.mkdir()
    for name in (checkpoint.MODEL_FILE, checkpoint.STATE_FILE, checkpoint.CONFIG_FILE):
        (evil / name).write_bytes((folder / name).read_bytes())
    config = evil / checkpoint.CONFIG_FILE
    config.write_text(edit(config.read_text()))
    with pytest.raises(ConfigError) as error:
        load_model(evil)
    assert str(config) in str(error.value) and message in str(error.value), str(error.value)


def test_loading_a_model_never_writes_where_its_config_points(saved, tmp_path):
    """A best_model whose config.yaml had head.class_num null and dataset.root=<a user's folder> made
    load_model (and stage=eval) count classes by writing the digits there, over the user's SOP lists."""
    folder, tree = saved
    users = tmp_path / "users_sop"
    users.mkdir()
    for name in ("Ebay_train.txt", "Ebay_test.txt"):
        (users / name).write_text(f"the user's {name}\n")
    tree = yaml.safe_load(yaml.safe_dump(tree))
    tree["head"]["class_num"] = None
    tree["dataset"] = {"_target_": "recog.data.digits.load_digits", "root": str(users)}
    evil = tmp_path / "model"
    evil.mkdir()
    for name in (checkpoint.MODEL_FILE, checkpoint.STATE_FILE):
        (evil / name).write_bytes((folder / name).read_bytes())
    (evil / checkpoint.CONFIG_FILE).write_text(yaml.safe_dump(tree))
    cfg = compose(["stage=eval", f"model_path={evil}", f"paths.output_root={tmp_path / 'out'}", "mlflow.enabled=false"])
    for load in (lambda: load_model(evil), lambda: evaluate.run(cfg, tmp_path / "run")):
        with pytest.raises(ConfigError, match="head.class_num is null; .*Loading never reads the dataset"):
            load()
    assert sorted(p.name for p in users.iterdir()) == ["Ebay_test.txt", "Ebay_train.txt"]
    assert (users / "Ebay_train.txt").read_text() == "the user's Ebay_train.txt\n"
