"""The component registry: read from the yaml files of conf/ and hydra.searchpath, nothing imported;
a new loss and a new head are a .py file plus a yaml each, and train."""

import recog  # noqa: F401  (sets up the runtime before paddle is imported)

# isort: split

import sys

import numpy as np
import paddle
import pytest

from recog.api import build_loss, build_model, build_optimizer, compose
from recog.config import check_overrides
from recog.errors import ConfigError
from recog.registry import CONF_DIR, GROUPS, config_dirs, load_registry

SMALL = ["backbone.scale=0.25", "data.image_size=32", "neck.embedding_size=16"]

MODULE = '''
import paddle
from paddle import nn


class ScaledCosineHead(nn.Layer):
    """features [N, embedding_size] -> logits [N, class_num]: scale * cosine to learned class vectors."""

    def __init__(self, embedding_size: int, class_num: int, scale: float = 10.0):
        super().__init__()
        self.scale = scale
        self.weight = self.create_parameter([embedding_size, class_num])

    def forward(self, features, labels=None):
        features = nn.functional.normalize(features, axis=1)
        return self.scale * paddle.matmul(features, nn.functional.normalize(self.weight, axis=0))


class CentroidSpreadLoss(nn.Layer):
    """Mean squared distance of each feature to its class mean (a pull-together term)."""

    def __init__(self, power: float = 2.0):
        super().__init__()
        self.power = power

    def forward(self, inputs, labels):
        labels = labels.reshape([-1])
        total = 0.0
        for label in paddle.unique(labels).numpy().tolist():
            members = inputs[labels == label]
            total = total + (members - members.mean(axis=0, keepdim=True)).abs().pow(self.power).sum(axis=1).mean()
        return total
'''

HEAD_YAML = """
# A user's head, registered by this file on hydra.searchpath.
_target_: {module}.ScaledCosineHead
class_num: null
scale: 10.0
"""

LOSS_YAML = """
# CE on the head's logits plus a user's pull-together term on the features.
defaults:
  - ce
  - _self_
spread:
  weight: 0.5
  input: features
  fn:
    _target_: {module}.CentroidSpreadLoss
    power: 2.0
"""


@pytest.fixture()
def user_components(tmp_path, monkeypatch):
    """A module on sys.path and a config dir with head/scaled_cosine.yaml and loss/ce_spread.yaml."""
    module = f"user_components_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    conf = tmp_path / "my_conf"
    (conf / "head").mkdir(parents=True)
    (conf / "loss").mkdir()
    (conf / "head" / "scaled_cosine.yaml").write_text(HEAD_YAML.format(module=module))
    (conf / "loss" / "ce_spread.yaml").write_text(LOSS_YAML.format(module=module))
    yield module, conf
    sys.modules.pop(module, None)


def test_registry_reads_the_config_tree():
    registry = load_registry()
    assert registry.searchpath == (CONF_DIR.resolve(),)
    assert set(registry.options) == set(GROUPS)
    for group in GROUPS:
        files = {p.stem for p in (CONF_DIR / group).glob("*.yaml")}
        assert files and set(registry.options[group]) == files, group
    assert registry.is_registered("backbone", "recog.models.backbones.PPLCNet")
    assert registry.is_registered("loss", "recog.losses.TripletLossV2")
    assert registry.is_registered("loss", "recog.losses.ContrastiveLoss")  # loss=contrastive, what XBM wraps
    assert registry.is_registered("dataset", "recog.data.digits.load_digits")  # under `dataset:` of a _global_ file
    assert registry.is_registered("scheduler", "recog.optim.warmup_cosine")
    assert not registry.is_registered("head", "recog.models.backbones.PPLCNet")  # only in its own group
    assert registry.nested == {"recog.losses.XBM": {"loss": "loss"}}
    assert registry.targets["loss"]["recog.losses.CELoss"] == CONF_DIR / "loss" / "ce.yaml"


def test_registry_imports_nothing(tmp_path):
    (tmp_path / "backbone").mkdir()
    (tmp_path / "backbone" / "odd.yaml").write_text("_target_: module_that_does_not_exist.Net\n")
    registry = load_registry([f"file://{tmp_path}"])
    assert "module_that_does_not_exist" not in sys.modules
    assert registry.is_registered("backbone", "module_that_does_not_exist.Net")
    assert config_dirs([f"file://{tmp_path}"]) == (CONF_DIR.resolve(), tmp_path.resolve())
    with pytest.raises(ConfigError, match="module_that_does_not_exist.Net cannot be imported"):
        compose([f"hydra.searchpath=[file://{tmp_path}]", "backbone=odd"])


def test_searchpath_components_register_compose_and_train_one_step(user_components):
    module, conf = user_components
    searchpath = f"hydra.searchpath=[file://{conf}]"
    registry = load_registry([f"file://{conf}"])
    assert registry.is_registered("head", f"{module}.ScaledCosineHead")
    assert registry.is_registered("loss", f"{module}.CentroidSpreadLoss")
    assert not load_registry().is_registered("head", f"{module}.ScaledCosineHead")

    cfg = compose(
        SMALL + [searchpath, "head=scaled_cosine", "head.scale=8.0", "loss=ce_spread", "scheduler.warmup_epochs=0"]
    )
    assert cfg.head.scale == 8.0 and set(cfg.loss) == {"ce", "spread"}
    model, loss_fn = build_model(cfg, class_num=3), build_loss(cfg, class_num=3)
    assert type(model.head).__name__ == "ScaledCosineHead" and model.head.scale == 8.0
    assert type(loss_fn.terms["spread"]).__name__ == "CentroidSpreadLoss"

    optimizer, schedule = build_optimizer(cfg, model.parameters(), steps_per_epoch=1)
    head_before = model.head.weight.numpy().copy()
    neck_before = model.neck.fc.weight.numpy().copy() if hasattr(model.neck, "fc") else None
    model.train()
    images = paddle.to_tensor(np.random.default_rng(0).standard_normal((6, 3, 32, 32)).astype("float32"))
    labels = paddle.to_tensor(np.array([0, 0, 1, 1, 2, 2], dtype="int64"))
    values = loss_fn(model(images, labels), labels)
    assert float(values["spread"]) > 0 and np.isfinite(float(values["loss"]))
    values["loss"].backward()
    optimizer.step()
    optimizer.clear_grad()
    schedule.step()
    assert np.abs(model.head.weight.numpy() - head_before).max() > 0  # the user's head trained
    if neck_before is not None:
        assert np.abs(model.neck.fc.weight.numpy() - neck_before).max() > 0


def test_searchpath_components_are_checked_like_ours(user_components):
    module, conf = user_components
    searchpath = f"hydra.searchpath=[file://{conf}]"
    with pytest.raises(ConfigError) as error:
        compose([searchpath, "head=scaled_cosine", "head.scael=3"])
    assert "scael" in str(error.value) and "valid keys in head: class_num, scale" in str(error.value)
    with pytest.raises(ConfigError, match=r"loss\.spread\.fn\.power='high'.*a float"):
        check_overrides([searchpath, "loss=ce_spread", "loss.spread.fn.power=high"])
    check_overrides([searchpath, "-m", "head=scaled_cosine", "loss=ce_spread", "head.scale=4.0,16.0"])


def test_unregistered_target_is_refused_at_compose():
    with pytest.raises(ConfigError) as error:
        compose(["backbone._target_=os.system"])
    message = str(error.value)
    assert "backbone._target_=os.system is not a registered backbone" in message
    assert "recog.models.backbones.PPLCNet" in message
    cfg = compose(
        [
            "backbone._target_=recog.models.backbones.ResNetVd",
            "+backbone.depth=18",
            "~backbone.scale",
            "~backbone.dropout_prob",
        ]
    )
    assert cfg.backbone.depth == 18  # another registered backbone is fine


def test_nested_target_only_where_a_yaml_declares_one():
    cfg = compose(["loss=xbm", "loss.xbm.fn.loss._target_=recog.losses.ContrastiveLoss"])
    assert cfg.loss.xbm.fn.loss.margin == 0.5
    with pytest.raises(
        ConfigError,
        match=r"'margin' is not an argument of recog\.losses\.CELoss; valid keys in "
        r"loss\.xbm\.fn\.loss: epsilon$",
    ):
        compose(["loss=xbm", "loss.xbm.fn.loss._target_=recog.losses.CELoss"])  # CELoss has no margin
    with pytest.raises(ConfigError, match="not a registered loss"):
        compose(["loss=xbm", "loss.xbm.fn.loss._target_=os.system"])
    with pytest.raises(ConfigError, match=r"head\.margin holds a _target_"):
        compose(["+head.margin._target_=recog.losses.CELoss"])


def test_fpn_levels_are_a_constructor_argument():
    cfg = compose(
        [
            "neck=fpn",
            "neck.num_levels=2",
            "neck.embedding_size=16",
            "neck.fpn_channels=8",
            "head=none",
            "backbone.scale=0.25",
            "data.image_size=32",
        ]
    )
    model = build_model(cfg)
    assert len(model.neck.in_channels) == 2
    model.eval()
    assert model(paddle.zeros([2, 3, 32, 32]))["features"].shape == [2, 16]
    with pytest.raises(ConfigError, match="num_levels=9"):
        build_model(
            compose(["neck=fpn", "neck.num_levels=9", "head=none", "backbone.scale=0.25", "data.image_size=32"])
        )
