"""recog.build_model / recog.build_loss from composed configs."""

import recog  # noqa: F401  (sets up the runtime before paddle is imported)

# isort: split

import numpy as np
import paddle
import pytest

from recog.api import build_loss, build_model, compose
from recog.errors import ConfigError
from recog.losses import CELoss, TripletLossV2

pytestmark = pytest.mark.filterwarnings("ignore:When training, we now always track global mean")
SMALL = ["backbone.scale=0.25", "data.image_size=32"]


@pytest.fixture(scope="module")
def output_root(tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "recog_output_root"  # shared: digits written once
    root.mkdir(exist_ok=True)
    return str(root)


def _images(n=4, size=32, seed=0):
    return paddle.to_tensor(np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype("float32"))


def _labels(*values):
    return paddle.to_tensor(np.array(values, dtype="int64"))


@pytest.mark.parametrize("head", ["fc", "arcmargin", "none"])
@pytest.mark.parametrize("neck", ["fc", "none"])
def test_outputs(neck, head):
    cfg = compose(
        SMALL
        + [f"neck={neck}", f"head={head}"]
        + (["neck.embedding_size=24"] if neck == "fc" else [])
        + ([] if head == "none" else ["head.class_num=6"])
    )
    model = build_model(cfg)
    for training in (True, False):
        model.train() if training else model.eval()
        out = model(_images(), _labels(0, 1, 2, 3))
        expected = {"backbone", "features"} | ({"logits"} if head != "none" else set())
        assert set(out) == expected
        assert out["backbone"].shape == [4, 1280]  # stop_layer=flatten
        assert out["features"].shape == [4, 24 if neck == "fc" else 1280]
        if head != "none":
            assert out["logits"].shape == [4, 6]
            assert np.isfinite(out["logits"].numpy()).all()
    if neck == "none":
        np.testing.assert_array_equal(out["features"].numpy(), out["backbone"].numpy())
    assert (model.neck is None) == (neck == "none") and (model.head is None) == (head == "none")


def test_backbone_is_cut_at_stop_layer():
    model = build_model(compose(SMALL + ["head=none"]))
    names = [n for n, _ in model.backbone.named_children()]
    assert names[-1] == "flatten" and "fc" not in names
    assert not any(k.startswith("backbone.fc.") for k in model.state_dict())


def test_class_num_follows_dataset(output_root):
    cfg = compose(SMALL + [f"paths.output_root={output_root}", "head=fc", "neck.embedding_size=16"])
    assert cfg.head.class_num is None
    model = build_model(cfg)  # digits: classes 0-4 train
    model.eval()
    assert model(_images())["logits"].shape == [4, 5]
    assert list(model.head.fc.weight.shape) == [16, 5]

    arc = build_model(compose(SMALL + [f"paths.output_root={output_root}", "head=arcmargin"]))
    assert list(arc.head.weight.shape) == [512, 5]


def test_class_num_precedence(tmp_path):
    # head.class_num wins over the argument, which wins over the dataset; neither reads the data.
    root = [f"paths.output_root={tmp_path}"]
    model = build_model(compose(SMALL + root + ["head=fc", "head.class_num=7", "neck.embedding_size=8"]), class_num=9)
    assert list(model.head.fc.weight.shape) == [8, 7]
    model = build_model(compose(SMALL + root + ["head=fc", "neck.embedding_size=8"]), class_num=9)
    assert list(model.head.fc.weight.shape) == [8, 9]
    assert not (tmp_path / "data").exists()


def test_embedding_size():
    model = build_model(compose(SMALL + ["neck=fc", "neck.embedding_size=128", "head=fc", "head.class_num=3"]))
    model.eval()
    out = model(_images(2))
    assert out["features"].shape == [2, 128]
    assert model.neck.embedding_size == 128
    assert list(model.neck.fc.weight.shape) == [1280, 128]
    assert list(model.head.fc.weight.shape) == [128, 3]


def test_stop_layer_inside_a_stage():
    for neck, width in (("none", 64 * 2 * 2), ("fc", 32)):
        cfg = compose(
            SMALL
            + ["backbone.stop_layer=blocks5.2", f"neck={neck}", "head=arcmargin", "head.class_num=3"]
            + (["neck.embedding_size=32"] if neck == "fc" else [])
        )
        model = build_model(cfg)
        model.eval()
        out = model(_images(2))
        # PP-LCNet x0.25 blocks5 has make_divisible(256 * 0.25) = 64 channels at stride 16: 32 -> 2x2
        assert out["backbone"].shape == [2, 64, 2, 2]
        assert out["features"].shape == [2, width]
        assert out["logits"].shape == [2, 3]
        if neck == "none":
            np.testing.assert_array_equal(out["features"].numpy(), out["backbone"].reshape([2, -1]).numpy())
        assert len(model.backbone.blocks5) == 3 and not hasattr(model.backbone, "blocks6")


def test_unknown_stop_layer():
    with pytest.raises(ConfigError) as error:
        build_model(compose(SMALL + ["backbone.stop_layer=blocks5.9", "head=none"]))
    message = str(error.value)
    assert "blocks5.9" in message
    for name in ("conv1", "blocks5.2", "blocks5.5", "blocks6", "flatten"):
        assert name in message


# ---- losses -----------------------------------------------------------------------------------------
def _outputs(seed=3):
    rng = np.random.default_rng(seed)
    return {
        "logits": paddle.to_tensor(rng.standard_normal((6, 4)).astype("float32")),
        "features": paddle.to_tensor(rng.standard_normal((6, 5)).astype("float32")),
    }


PK = (0, 0, 1, 1, 2, 2)


def test_build_loss_weighted_terms():
    cfg = compose(
        ["loss=ce_triplet", "loss.ce.weight=0.5", "loss.triplet_v2.weight=2.0", "loss.triplet_v2.fn.margin=0.3"]
    )
    loss_fn = build_loss(cfg)
    outputs, labels = _outputs(), _labels(*PK)
    values = loss_fn(outputs, labels)
    assert set(values) == {"ce", "triplet_v2", "loss"}

    ce = float(CELoss()(outputs["logits"], labels))
    triplet = float(TripletLossV2(margin=0.3)(outputs["features"], labels))
    assert ce > 0 and triplet > 0
    # each term is reported weighted, under its name; the total is their sum
    assert float(values["ce"]) == pytest.approx(0.5 * ce, rel=1e-6)
    assert float(values["triplet_v2"]) == pytest.approx(2.0 * triplet, rel=1e-6)
    assert float(values["loss"]) == pytest.approx(0.5 * ce + 2.0 * triplet, rel=1e-6)


def test_build_loss_reads_configured_inputs():
    loss_fn = build_loss(compose(["loss=ce_triplet"]))
    assert loss_fn.inputs == {"ce": "logits", "triplet_v2": "features"}
    assert loss_fn.weights == {"ce": 1.0, "triplet_v2": 1.0}
    with pytest.raises(KeyError, match="logits"):
        loss_fn({"features": _outputs()["features"]}, _labels(*PK))


def test_build_loss_weight_applies_to_single_term():
    outputs, labels = _outputs(), _labels(*PK)
    ce = float(CELoss()(outputs["logits"], labels))
    values = build_loss(compose(["loss=ce", "loss.ce.weight=0.5"]))(outputs, labels)
    assert set(values) == {"ce", "loss"}
    assert float(values["loss"]) == pytest.approx(0.5 * ce, rel=1e-6)
    assert float(values["ce"]) == pytest.approx(0.5 * ce, rel=1e-6)

    triplet = float(TripletLossV2(margin=0.5)(outputs["features"], labels))
    values = build_loss(compose(["loss=triplet_v2", "loss.triplet_v2.weight=2.0"]))(outputs, labels)
    assert set(values) == {"triplet_v2", "loss"}
    assert float(values["loss"]) == pytest.approx(2.0 * triplet, rel=1e-6)


def test_build_loss_term_options_reach_the_module():
    loss_fn = build_loss(
        compose(
            [
                "loss=ce_triplet",
                "loss.ce.fn.epsilon=0.1",
                "loss.triplet_v2.fn.margin=0.7",
                "loss.triplet_v2.fn.normalize_feature=false",
            ]
        )
    )
    assert loss_fn.terms["ce"].epsilon == 0.1
    assert loss_fn.terms["triplet_v2"].margin == 0.7 and loss_fn.terms["triplet_v2"].normalize_feature is False


def test_loss_gradients_reach_the_model():
    cfg = compose(SMALL + ["loss=ce_triplet", "head=arcmargin", "head.class_num=3", "neck.embedding_size=16"])
    model, loss_fn = build_model(cfg), build_loss(cfg)
    model.train()
    labels = _labels(*PK)
    values = loss_fn(model(_images(6), labels), labels)
    values["loss"].backward()
    for name in ("neck.fc.weight", "head.weight", "backbone.conv1.conv.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and np.isfinite(grad.numpy()).all() and np.abs(grad.numpy()).sum() > 0, name
