"""backbone.pretrained: PaddleClas-format weights round-trip by name into every PP-LCNet scale
and ResNet_vd depth, through build_model (what run.py uses), and a wrong file is refused clearly."""

import numpy as np
import paddle
import pytest

import recog
from recog.errors import RecogError
from recog.models.backbones import PPLCNet, ResNetVd
from recog.models.backbones.pplcnet import SCALES
from recog.models.weights import load_pretrained

# A few of the names PaddleClas's released files use (ppcls legendary_models pp_lcnet / resnet).
PADDLECLAS_NAMES = {
    PPLCNet: [
        "conv1.conv.weight",
        "blocks2.0.dw_conv.bn._mean",
        "blocks6.0.se.conv1.weight",
        "last_conv.weight",
        "fc.weight",
    ],
    ResNetVd: [
        "stem.0.conv.weight",
        "stem.2.bn._variance",
        "blocks.0.conv0.conv.weight",
        "blocks.0.short.conv.weight",
        "fc.weight",
    ],
}


def _save_paddleclas_style(model, path):
    """A released-weights file: paddle.save of a name -> array dict, with random values (uniform
    float32: drawn ~15x faster than normal ones, which matters at ResNet152's 60M values)."""
    rng = np.random.default_rng(0)
    state = {k: rng.random(v.shape, dtype=np.float32) for k, v in model.state_dict().items()}
    paddle.save(state, str(path))
    return state


@pytest.mark.slow
@pytest.mark.parametrize(
    "make",
    [lambda s=s: PPLCNet(scale=s) for s in SCALES] + [lambda d=d: ResNetVd(depth=d) for d in (18, 34, 50, 101, 152)],
    ids=[f"PPLCNet_x{s}" for s in SCALES] + [f"ResNet{d}_vd" for d in (18, 34, 50, 101, 152)],
)
def test_paddleclas_names_load_with_nothing_missing(make, tmp_path):
    # One model is both the source of the names and the target (building a deep ResNet twice costs
    # seconds): the file's random values differ from its initial ones, so each check below can fail.
    model = make()
    names = PADDLECLAS_NAMES[type(model)]
    assert set(names) <= set(model.state_dict())
    state = _save_paddleclas_style(model, tmp_path / "w.pdparams")
    for name in names:
        assert not np.array_equal(model.state_dict()[name].numpy(), state[name])
    report = load_pretrained(model, tmp_path / "w.pdparams")
    assert report["missing"] == [] and report["unexpected"] == [] and len(report["loaded"]) == len(state)
    for name in names:
        np.testing.assert_array_equal(model.state_dict()[name].numpy(), state[name])


def test_build_model_loads_backbone_pretrained_before_the_stop_layer(tmp_path):
    state = _save_paddleclas_style(PPLCNet(scale=0.25), tmp_path / "PPLCNet_x0_25_pretrained.pdparams")
    cfg = recog.compose(
        [
            "backbone.scale=0.25",
            "data.image_size=32",
            f"paths.output_root={tmp_path}",
            f"backbone.pretrained={tmp_path / 'PPLCNet_x0_25_pretrained.pdparams'}",
        ]
    )
    model = recog.build_model(cfg, class_num=3)
    weights = model.backbone.state_dict()
    assert "fc.weight" not in weights  # cut at flatten after loading: the ImageNet fc is gone
    np.testing.assert_array_equal(weights["last_conv.weight"].numpy(), state["last_conv.weight"])
    np.testing.assert_array_equal(weights["blocks5.3.pw_conv.bn._mean"].numpy(), state["blocks5.3.pw_conv.bn._mean"])


def test_weights_of_another_architecture_are_refused_with_the_tensor_named(tmp_path):
    _save_paddleclas_style(PPLCNet(scale=1.0), tmp_path / "x1_0.pdparams")
    with pytest.raises(RecogError, match=r"tensor .* has shape \[16.*\] in the file but \[8.*\] in the model"):
        load_pretrained(PPLCNet(scale=0.25), tmp_path / "x1_0.pdparams")
    _save_paddleclas_style(ResNetVd(depth=18), tmp_path / "resnet18.pdparams")
    cfg = recog.compose(
        [
            "backbone.scale=0.25",
            "data.image_size=32",
            f"paths.output_root={tmp_path}",
            f"backbone.pretrained={tmp_path / 'resnet18.pdparams'}",
        ]
    )
    with pytest.raises(RecogError, match=r"another architecture: only \d+ of its 117 tensors match"):
        recog.build_model(cfg, class_num=3)


def test_resnet_vd_with_fpn_neck(tmp_path):
    cfg = recog.compose(
        [
            "backbone=resnet_vd",
            "backbone.depth=18",
            "neck=fpn",
            "neck.embedding_size=64",
            "neck.fpn_channels=32",
            "head=none",
            "data.image_size=64",
            f"paths.output_root={tmp_path}",
        ]
    )
    model = recog.build_model(cfg)
    assert model.neck.in_channels == [128, 256, 512]  # the last three stages
    out = model(paddle.randn([2, 3, 64, 64]))
    assert out["features"].shape == [2, 64] and out["backbone"].shape == [2, 512, 2, 2]
    out["features"].sum().backward()
    assert all(conv.weight.grad is not None for conv in model.neck.lateral_convs)
