"""Config composition: every option of every group composes and instantiates; the product-spec
overrides land in the tree; bad input becomes a ConfigError that names the problem."""

import recog  # noqa: F401  (sets up the runtime before paddle is imported)

# isort: split

import math
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest
from hydra.utils import get_object
from omegaconf import OmegaConf

from recog.api import build_loss, build_model, build_optimizer, compose, load_splits
from recog.config import check_overrides, require_complete
from recog.config.compose import CONF_DIR
from recog.errors import ConfigError, RecogError
from recog.models.backbones.pplcnet import SCALES
from recog.postprocess import build_postprocess

SMALL = ["backbone.scale=0.25", "data.image_size=32"]
pytestmark = pytest.mark.filterwarnings("ignore:When training, we now always track global mean")


def _groups():
    return sorted(d.name for d in Path(CONF_DIR).iterdir() if d.is_dir())


def _options(group):
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


GROUP_OPTIONS = [(g, o) for g in _groups() for o in _options(g)]


@pytest.fixture(scope="module")
def output_root(tmp_path_factory):
    # Shared by the modules of this session: the digits are written once (load_digits skips a
    # complete copy).
    root = tmp_path_factory.getbasetemp() / "recog_output_root"
    root.mkdir(exist_ok=True)
    return str(root)


def _images(n, size, seed=0):
    return paddle.to_tensor(np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype("float32"))


def _pk_labels():
    return paddle.to_tensor(np.array([0, 0, 1, 1, 2, 2], dtype="int64"))


def _small(cfg_overrides, cfg):
    """Add the cheap backbone scale only where the chosen backbone has one."""
    return cfg_overrides + (["backbone.scale=0.25"] if "scale" in cfg.backbone else []) + ["data.image_size=32"]


# ---- one instantiation check per group ----------------------------------------------------------
def _check_backbone(option, root):
    base = [f"backbone={option}", "neck=none", "head=none", f"paths.output_root={root}"]
    cfg = compose(_small(base, compose(base)))
    model = build_model(cfg)
    model.eval()
    out = model(_images(2, cfg.data.image_size))
    assert out["backbone"].shape[0] == 2
    assert out["features"].ndim == 2 and out["features"].shape[0] == 2 and out["features"].shape[1] > 0
    assert "logits" not in out


def _check_neck(option, root):
    cfg = compose([f"neck={option}", "head=none", f"paths.output_root={root}"] + SMALL)
    model = build_model(cfg)
    model.eval()
    out = model(_images(2, 32))
    if cfg.neck is None:
        assert model.neck is None
        np.testing.assert_array_equal(out["features"].numpy(), out["backbone"].reshape([2, -1]).numpy())
    else:
        assert out["features"].shape == [2, model.neck.embedding_size]
        assert cfg.neck.embedding_size in (None, model.neck.embedding_size)  # bnneck: None = backbone width


def _check_head(option, root):
    cfg = compose([f"head={option}", "neck.embedding_size=16", f"paths.output_root={root}"] + SMALL)
    model = build_model(cfg, class_num=7)
    model.train()
    out = model(_images(4, 32), paddle.to_tensor([0, 1, 2, 3]))
    if cfg.head is None:
        assert model.head is None and "logits" not in out
    else:
        assert out["logits"].shape == [4, 7]
        assert np.isfinite(out["logits"].numpy()).all()


def _check_loss(option, root):
    cfg = compose([f"loss={option}", f"paths.output_root={root}"])
    loss_fn = build_loss(cfg, class_num=3, embedding_size=8)  # the shapes of the outputs below
    rng = np.random.default_rng(1)
    outputs = {
        "logits": paddle.to_tensor(rng.standard_normal((6, 3)).astype("float32")),
        "features": paddle.to_tensor(rng.standard_normal((6, 8)).astype("float32")),
        "backbone": paddle.to_tensor(rng.standard_normal((6, 8)).astype("float32")),
    }
    values = loss_fn(outputs, _pk_labels())
    assert set(values) == set(cfg.loss) | {"loss"}
    assert len(cfg.loss) >= 1
    total = float(values["loss"])
    assert math.isfinite(total) and total > 0
    assert total == pytest.approx(sum(float(values[name]) for name in cfg.loss), rel=1e-6)


# Generated datasets, shrunk: the glyph benchmark writes 24,000 images at its full size.
DATASET_OVERRIDES = {
    "glyphs": [
        "dataset.train_classes=4",
        "dataset.test_classes=3",
        "dataset.pretrain_classes=2",
        "dataset.image_size=16",
    ]
}


def _check_dataset(option, root):
    cfg = compose([f"dataset={option}", f"paths.output_root={root}", *DATASET_OVERRIDES.get(option, [])])
    missing = [k for k in OmegaConf.missing_keys(cfg) if k.startswith("dataset.")]
    if missing:  # e.g. sop / image_list: the user must name the root
        for check in (lambda: require_complete(cfg, "dataset"), lambda: load_splits(cfg)):
            with pytest.raises(ConfigError) as error:
                check()
            for key in missing:
                assert key in str(error.value)
    else:
        splits = load_splits(cfg)
        assert len(splits.train) > 0 and len(splits.query) > 0
        assert splits.num_train_classes >= 2


def _tiny_layer():
    paddle.seed(0)
    return paddle.nn.Linear(3, 2)


def _one_step(layer, optimizer, schedule):
    before = layer.weight.numpy().copy()
    x = paddle.to_tensor(np.random.default_rng(2).standard_normal((5, 3)).astype("float32"))
    layer(x).pow(2).sum().backward()
    optimizer.step()
    optimizer.clear_grad()
    schedule.step()
    return np.abs(layer.weight.numpy() - before).max()


def _check_optimizer(option, root):
    cfg = compose([f"optimizer={option}", "scheduler.warmup_epochs=0", f"paths.output_root={root}"])
    layer = _tiny_layer()
    optimizer, schedule = build_optimizer(cfg, layer.parameters(), steps_per_epoch=3)
    assert isinstance(optimizer, paddle.optimizer.Optimizer)
    assert optimizer.get_lr() == pytest.approx(cfg.optimizer.lr)
    assert _one_step(layer, optimizer, schedule) > 0


def _check_scheduler(option, root):
    cfg = compose([f"scheduler={option}", "trainer.epochs=3", f"paths.output_root={root}"])
    layer = _tiny_layer()
    optimizer, schedule = build_optimizer(cfg, layer.parameters(), steps_per_epoch=4)
    assert isinstance(schedule, paddle.optimizer.lr.LRScheduler)
    rates = []
    for _ in range(12):
        rates.append(optimizer.get_lr())
        assert optimizer.get_lr() == pytest.approx(schedule())
        schedule.step()
    assert all(math.isfinite(r) and 0 <= r <= cfg.optimizer.lr * (1 + 1e-6) for r in rates)
    assert max(rates) == pytest.approx(cfg.optimizer.lr)  # the base rate is reached


def _check_experiment(option, root):
    # Composition and targets only: tests/stages/test_recipes.py trains every recipe (shrunk).
    cfg = compose([f"experiment={option}", f"paths.output_root={root}"])
    require_complete(cfg, *[k for k in cfg if k != "dataset"])
    for group in ("backbone", "neck", "head", "dataset", "optimizer", "scheduler"):
        if cfg[group] is not None:
            assert get_object(cfg[group]._target_), group
    for term in cfg.loss.values():
        assert get_object(term.fn._target_)


def _check_hparams_search(option, root):
    # Composition only: tests/test_sweeps.py checks the search-space keys and runs a search.
    cfg = compose([f"hparams_search={option}", f"paths.output_root={root}"])
    require_complete(cfg, *[k for k in cfg if k != "dataset"])


def _check_postprocess(option, root):
    cfg = compose([f"postprocess={option}", f"paths.output_root={root}"])
    pipeline = build_postprocess(cfg.postprocess)
    assert len(pipeline.steps) == len(cfg.postprocess)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((6, 3, 4, 4)).astype(np.float32)
    features = pipeline.features_of(lambda x: x.reshape(len(x), -1)[:, :8] + 0.1, images, normalize=True)
    assert features.shape == (6, 8) and np.isfinite(features).all()
    labels = np.repeat(np.arange(3), 2)
    results = pipeline.rank(features / np.linalg.norm(features, axis=1, keepdims=True), labels, k=3)
    assert results.indices.shape == (6, 3) and (results.indices >= 0).all()
    assert 0 < results.metrics((1,))["mAP"] <= 1


CHECKS = {
    "backbone": _check_backbone,
    "neck": _check_neck,
    "head": _check_head,
    "loss": _check_loss,
    "dataset": _check_dataset,
    "optimizer": _check_optimizer,
    "scheduler": _check_scheduler,
    "experiment": _check_experiment,
    "hparams_search": _check_hparams_search,
    "postprocess": _check_postprocess,
}


def test_every_group_has_an_instantiation_check():
    assert set(_groups()) == set(CHECKS), "a new config group needs a check in CHECKS"


def test_known_options_are_discovered():
    expected = {
        "backbone": {"pplcnet"},
        "neck": {"fc", "none"},
        "head": {"fc", "arcmargin", "none"},
        "loss": {"ce", "triplet", "triplet_v2", "ce_triplet"},
        "dataset": {"digits", "glyphs", "sop", "image_list"},
        "optimizer": {"momentum", "adamw"},
        "scheduler": {"warmup_cosine", "multi_step"},
        "experiment": {"digits_demo", "paddleclas_2021"},
    }
    for group, options in expected.items():
        assert options <= set(_options(group)), group


def _param(group: str, option: str):
    # The glyph benchmark's catalogue (~6 s of CPU) is built once per process: its tests share one.
    marks = [pytest.mark.xdist_group("glyphs")] if (group, option) == ("dataset", "glyphs") else []
    return pytest.param(group, option, marks=marks, id=f"{group}={option}")


@pytest.mark.parametrize("group,option", [_param(g, o) for g, o in GROUP_OPTIONS])
def test_option_composes_and_instantiates(group, option, output_root):
    CHECKS[group](option, output_root)


def test_sop_and_image_list_require_dataset_root():
    for option in ("sop", "image_list"):
        cfg = compose([f"dataset={option}"])
        assert OmegaConf.is_missing(cfg.dataset, "root")
        with pytest.raises(ConfigError, match=r"dataset\.root"):
            require_complete(cfg, "dataset")
        with pytest.raises(ConfigError, match=r"dataset\.root"):
            require_complete(cfg)
        require_complete(cfg, "backbone")  # other sections are complete


def test_require_complete_passes_once_root_is_set(tmp_path):
    require_complete(compose(["dataset=sop", f"dataset.root={tmp_path}"]))
    with pytest.raises(ConfigError, match="dataset.train_list") as error:
        require_complete(compose(["dataset=image_list", f"dataset.root={tmp_path}"]))
    assert "dataset.root" not in str(error.value)


# ---- PP-LCNet at every scale ----------------------------------------------------------------------
# make_divisible(16 * s) and make_divisible(512 * s), by hand.
STEM = {0.25: 8, 0.35: 8, 0.5: 8, 0.75: 16, 1.0: 16, 1.5: 24, 2.0: 32, 2.5: 40}
LAST_STAGE = {0.25: 128, 0.35: 176, 0.5: 256, 0.75: 384, 1.0: 512, 1.5: 768, 2.0: 1024, 2.5: 1280}


def test_documented_scales():
    assert tuple(SCALES) == tuple(LAST_STAGE)
    assert "0.25 0.35 0.5 0.75 1.0 1.5 2.0 2.5" in (Path(CONF_DIR) / "backbone" / "pplcnet.yaml").read_text()


@pytest.mark.parametrize("scale", list(LAST_STAGE))
def test_pplcnet_every_scale(scale):
    cfg = compose(
        [
            "backbone=pplcnet",
            f"backbone.scale={scale}",
            "data.image_size=32",
            "neck.embedding_size=16",
            "head=fc",
            "head.class_num=3",
        ]
    )
    assert cfg.backbone.scale == scale
    model = build_model(cfg)
    assert model.backbone.conv1.conv.weight.shape[0] == STEM[scale]
    assert model.backbone.blocks6[-1].pw_conv.conv.weight.shape[0] == LAST_STAGE[scale]
    model.eval()
    out = model(_images(2, 32))
    assert out["backbone"].shape == [2, 1280]
    assert out["features"].shape == [2, 16]
    assert out["logits"].shape == [2, 3]


# ---- the product spec's overrides -------------------------------------------------------------------
def _sel(cfg, key):
    value = OmegaConf.select(cfg, key)
    return getattr(value, "value", value)  # enums -> their string


def _spec_line(root, device):
    """The product spec's overrides, exactly as written (PATH -> root, one device)."""
    return [
        "stage=train",
        "backbone=pplcnet",
        "head=arcmargin",
        "backbone.scale=1.0",
        "backbone.stop_layer=flatten",
        "neck=fc",
        "neck.embedding_size=128",
        "head.margin=0.2",
        "head.scale=30",
        "loss=ce_triplet",
        "dataset=sop",
        f"dataset.root={root}",
        "data.image_size=64",
        "data.batch_size=64",
        "data.samples_per_class=4",
        "optimizer.lr=0.05",
        "trainer.epochs=4",
        f"trainer.device={device}",
        "seed=0",
    ]


@pytest.mark.parametrize("device", ["auto", "cpu", "gpu"])
def test_spec_overrides_compose_as_written(tmp_path, device):
    args = _spec_line(tmp_path, device)
    cfg = compose(args)
    expected = {
        "stage": "train",
        "backbone._target_": "recog.models.backbones.PPLCNet",
        "backbone.scale": 1.0,
        "backbone.stop_layer": "flatten",
        "neck._target_": "recog.models.necks.FCNeck",
        "neck.embedding_size": 128,
        "head._target_": "recog.models.heads.ArcMargin",
        "head.margin": 0.2,
        "head.scale": 30.0,
        "loss.ce.fn._target_": "recog.losses.CELoss",
        "loss.triplet_v2.fn._target_": "recog.losses.TripletLossV2",
        "dataset._target_": "recog.data.sop.load_sop",
        "dataset.root": str(tmp_path),
        "data.image_size": 64,  # the command line wins over sop.yaml's 224
        "data.batch_size": 64,
        "data.samples_per_class": 4,
        "optimizer.lr": 0.05,
        "trainer.epochs": 4,
        "trainer.device": device,
        "seed": 0,
    }
    for key, value in expected.items():
        assert _sel(cfg, key) == value, key
    assert set(cfg.loss) == {"ce", "triplet_v2"} and cfg.loss.ce.fn.epsilon is None  # ce_triplet: CE unsmoothed
    require_complete(cfg)
    if device == "cpu":
        check_overrides(args)


def test_spec_overrides_land_with_other_values():
    """Some spec values equal the defaults; these prove that each key really is overridden."""
    overrides = {
        "stage": "eval",
        "backbone.scale": 0.75,
        "backbone.stop_layer": "blocks5.2",
        "neck.embedding_size": 96,
        "head.margin": 0.35,
        "head.scale": 64.0,
        "data.image_size": 48,
        "data.batch_size": 24,
        "data.samples_per_class": 3,
        "optimizer.lr": 0.01,
        "trainer.epochs": 3,
        "trainer.device": "gpu",
        "seed": 7,
    }
    default = compose()
    for key, value in overrides.items():
        assert _sel(default, key) != value, key
    assert default.loss.ce.fn.epsilon == 0.1 and default.head._target_.endswith("ArcMargin")
    cfg = compose([f"{k}={v}" for k, v in overrides.items()] + ["head=arcmargin", "loss=ce_triplet"])
    for key, value in overrides.items():
        assert _sel(cfg, key) == value, key
    assert set(cfg.loss) == {"ce", "triplet_v2"} and cfg.loss.ce.fn.epsilon is None  # ce_triplet: CE unsmoothed


def test_group_switches_land():
    cfg = compose(["head=fc", "neck=none", "loss=triplet", "optimizer=adamw", "scheduler=multi_step"])
    assert cfg.head._target_ == "recog.models.heads.FCHead" and "margin" not in cfg.head
    assert cfg.neck is None and set(cfg.loss) == {"triplet"}
    assert cfg.loss.triplet.fn._target_ == "recog.losses.TripletLoss"  # option, term and class agree
    assert compose(["loss=triplet_v2"]).loss.triplet_v2.fn._target_ == "recog.losses.TripletLossV2"
    assert cfg.optimizer._target_ == "recog.optim.adamw" and cfg.scheduler._target_ == "recog.optim.multi_step"


def test_default_recipe_and_the_one_it_replaced():
    """python run.py: PP-LCNet x2.5 at flatten, FC 512, ArcMargin, CE with 0.1 smoothing + TripletLossV2, AdamW
    (chosen by scripts/bench_recipes.py, README "What chose the default"); experiment=paddleclas_2021 is an
    earlier default, equal to it but for the loss and the optimizer, with the same data and budget."""
    default, old = compose(), compose(["experiment=paddleclas_2021"])
    assert default.backbone._target_.endswith("PPLCNet") and default.backbone.scale == 2.5
    assert default.backbone.stop_layer == "flatten" and default.neck.embedding_size == 512
    assert default.head._target_.endswith("ArcMargin")
    assert (default.head.margin, default.head.scale) == (0.2, 30.0)
    assert set(default.loss) == {"ce", "triplet_v2"} and default.loss.ce.fn.epsilon == 0.1
    assert (
        default.loss.triplet_v2.fn._target_ == "recog.losses.TripletLossV2"
        and default.loss.triplet_v2.input == "features"
    )
    assert default.optimizer._target_ == "recog.optim.adamw" and default.optimizer.lr == 1.0e-3
    assert default.scheduler._target_ == "recog.optim.warmup_cosine"
    assert set(old.loss) == {"ce"} and old.loss.ce.fn.epsilon is None
    assert old.optimizer._target_ == "recog.optim.momentum" and old.optimizer.lr == 0.05
    assert old.optimizer.weight_decay == 5.0e-4 and old.optimizer.momentum == 0.9
    differ = {key for key in default if default[key] != old[key]}
    assert differ == {"loss", "optimizer"}, differ
    assert compose(["experiment=paddleclas_2021", "dataset=sop", "dataset.root=/d"]).dataset.root == "/d"


def test_command_line_wins_over_experiment(output_root):
    cfg = compose(["experiment=digits_demo", "backbone.scale=1.0", "trainer.epochs=2"])
    assert cfg.backbone.scale == 1.0 and cfg.trainer.epochs == 2
    demo = compose(["experiment=digits_demo"])
    assert (
        demo.backbone.scale == 0.5 and demo.backbone.stop_layer == "blocks5" and set(demo.loss) == {"ce", "triplet_v2"}
    )
    # the recipe names no experiment: your own data trained with it goes where mlflow.experiment_name says
    assert demo.mlflow.experiment_name == "recog"
    assert compose(["experiment=digits_demo", "mlflow.experiment_name=logos"]).mlflow.experiment_name == "logos"


def test_digits_root_follows_output_root(tmp_path):
    cfg = compose([f"paths.output_root={tmp_path}"])
    assert cfg.dataset.root == f"{tmp_path}/data/digits"


# ---- errors -----------------------------------------------------------------------------------------
def _both(args):
    """The message from compose and from check_overrides (they must agree)."""
    with pytest.raises(ConfigError) as from_compose:
        compose(args)
    with pytest.raises(ConfigError) as from_check:
        check_overrides(args)
    assert str(from_compose.value) == str(from_check.value)
    assert isinstance(from_compose.value, RecogError)
    assert "Config search path" not in str(from_compose.value)
    return str(from_compose.value)


def _valid_keys(message):
    assert "valid keys" in message, message
    return {k.strip() for k in message.split("valid keys", 1)[1].split(":", 1)[1].split(",")}


def test_misspelt_backbone_key():
    message = _both(["backbone.scael=1"])
    assert "scael" in message
    assert {"scale", "dropout_prob", "stop_layer"} <= _valid_keys(message)


def test_misspelt_nested_loss_key():
    message = _both(["loss.ce.weght=1"])
    assert "weght" in message
    assert _valid_keys(message) == {"weight", "input", "fn"}
    message = _both(["loss.ce.fn.epsilonn=0.1"])
    assert "epsilonn" in message and _valid_keys(message) == {"epsilon"}


def test_loss_argument_at_term_level_points_to_fn():
    message = _both(["loss=triplet", "loss.triplet.margin=0.3"])
    assert "loss.triplet.fn.margin" in message and _valid_keys(message) == {"weight", "input", "fn"}
    assert compose(["loss=triplet", "loss.triplet.fn.margin=0.3"]).loss.triplet.fn.margin == 0.3


def test_wiring_keys_are_checked_too():
    message = _both(["loss.ce.input=logitz"])
    assert "logitz" in message and all(k in message for k in ("logits", "features", "backbone"))
    message = _both(["loss.ce.weight=heavy"])
    assert "loss.ce.weight" in message and "heavy" in message
    message = _both(["backbone.stop_layer=[1]"])
    assert "backbone.stop_layer" in message


def test_added_key_is_checked_against_the_constructor():
    # `+key=value` passes Hydra's struct check: the constructor's signature still refuses it.
    message = _both(["+head.marginn=0.3"])
    assert "marginn" in message and {"class_num", "margin", "scale", "easy_margin"} == _valid_keys(message)
    assert compose(["+backbone.class_expand=64"]).backbone.class_expand == 64  # a real argument is accepted


def test_supplied_arguments_are_refused():
    message = _both(["+neck.in_channels=7"])
    assert "in_channels" in message and "set by recog" in message


def test_misspelt_key_in_other_sections():
    message = _both(["data.imgae_size=32"])
    assert "imgae_size" in message and "image_size" in _valid_keys(message)
    message = _both(["head=fc", "head.margin=0.3"])  # FC has no margin
    assert "margin" in message and _valid_keys(message) == {"class_num", "bias", "weight_std"}


def test_unknown_top_level_key():
    message = _both(["trainr.epochs=3"])
    assert "trainr" in message
    assert {"trainer", "backbone", "data", "seed", "stage"} <= _valid_keys(message)


def test_unknown_group_option_lists_options():
    message = _both(["head=arcmarginn"])
    assert "arcmarginn" in message
    for option in _options("head"):
        assert option in message


def test_unknown_experiment_lists_options():
    message = _both(["experiment=digit_demo"])
    assert "digit_demo" in message and "digits_demo" in message


def test_unknown_stage():
    message = _both(["stage=trian"])
    assert "trian" in message and "train" in message.replace("trian", "") and "eval" in message


def test_wrong_type():
    message = _both(["backbone.scale=abc"])
    assert "abc" in message and "backbone.scale" in message
    message = _both(["trainer.epochs=many"])
    assert "many" in message and "trainer.epochs" in message


def test_unknown_device():
    message = _both(["trainer.device=tpu"])
    assert "tpu" in message and all(d in message for d in ("auto", "cpu", "gpu"))


def test_check_overrides_accepts_good_sweeps():
    check_overrides(["-m", "head.margin=0.1,0.2", "backbone.scale=0.25"])
    check_overrides(["--multirun", "loss=ce,ce_triplet", "hydra.job.chdir=true"])  # hydra.* is left to Hydra


def test_check_overrides_bad_option_inside_sweep():
    with pytest.raises(ConfigError) as error:
        check_overrides(["-m", "head=arcmargin,nope"])
    message = str(error.value)
    assert "nope" in message and all(o in message for o in _options("head"))


def test_check_overrides_bad_value_inside_sweep():
    with pytest.raises(ConfigError, match="abc") as error:
        check_overrides(["-m", "head.margin=0.1,abc"])
    assert "head.margin" in str(error.value)
    with pytest.raises(ConfigError, match="scael"):
        check_overrides(["-m", "backbone.scael=0.5,1.0"])


def test_check_overrides_bad_fixed_value_next_to_sweep():
    with pytest.raises(ConfigError, match="trian"):
        check_overrides(["-m", "head.margin=0.1,0.2", "stage=trian"])


def test_check_overrides_syntax_error():
    with pytest.raises(ConfigError) as error:
        check_overrides(["head.margin=[0.1"])
    message = str(error.value)
    assert message.startswith("cannot parse the override 'head.margin=[0.1'")
    assert "\n" not in message and "Traceback" not in message


@pytest.mark.parametrize("flags", [["--cfg", "job"], ["-cn", "config"]], ids=["--cfg job", "-cn config"])
def test_check_overrides_leaves_hydra_flags_with_values_alone(flags, monkeypatch):
    # `python run.py --cfg job head=fc` must reach Hydra: the value after a flag is not an override,
    # and with -cn/-cp the tree may not be ours, so such command lines are Hydra's to validate.
    compose_module = sys.modules["recog.config.compose"]  # the package re-exports the function under this name
    composed = []
    monkeypatch.setattr(compose_module, "compose", lambda overrides=(): composed.append(list(overrides)))
    check_overrides(flags + ["head=fc"])
    check_overrides(flags + ["backbone.scael=1"])
    assert composed == []  # nothing composed: left to Hydra
    check_overrides(["head=fc"])
    assert composed == [["head=fc"]]  # without the flag the same line is checked


@pytest.mark.parametrize("sweep", ["head.margin=0.1,0.2", "stage=interval(0,1)"])
def test_a_sweep_without_multirun_is_refused_before_hydra(sweep):
    """Found by the fuzzer: an interval() sweep without -m passed the pre-check, then Hydra refused it."""
    with pytest.raises(ConfigError, match="is a sweep .*run it with -m"):
        check_overrides([sweep])
    check_overrides(["-m", "head.margin=0.1,0.2"])
