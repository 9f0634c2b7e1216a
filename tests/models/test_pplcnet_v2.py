"""PP-LCNetV2 against PaddleClas 2.6.0's own definition (the oracle wheel), and its layout."""

import recog  # noqa: F401  (sets up the runtime before paddle is imported)

# isort: split

import numpy as np
import paddle
import pytest
from paddleclas_oracle import import_ppcls, randomise

from recog.models.backbones.pplcnet_v2 import PPLCNetV2
from recog.models.stop_layer import stop_layer_names, truncate_after
from recog.models.weights import load_pretrained


@pytest.fixture(scope="module")
def ppcls(tmp_path_factory):
    return import_ppcls(
        tmp_path_factory.mktemp("paddleclas"),
        "arch.backbone.legendary_models.pp_lcnet_v2",
        "arch.backbone.variant_models.pp_lcnetv2_variant",
    )


def _images(size=64, n=2, seed=1):
    return paddle.to_tensor(np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype("float32"))


def _max_rel_diff(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_small_matches_paddleclas(ppcls, tmp_path):
    theirs = ppcls["arch.backbone.legendary_models.pp_lcnet_v2"].PPLCNetV2_small(pretrained=False)
    ours = PPLCNetV2(size="small")
    theirs.eval()
    report = load_pretrained(ours, randomise(theirs, tmp_path / "small.pdparams"))
    assert report["missing"] == [] and report["unexpected"] == [] and len(report["loaded"]) > 100
    ours.eval()
    x = _images()
    with paddle.no_grad():
        logits_theirs, logits_ours = theirs(x).numpy(), ours(x).numpy()
        assert logits_ours.shape == (2, 1000)
        assert np.abs(logits_theirs).max() > 1e-2
        assert _max_rel_diff(logits_ours, logits_theirs) < 1e-5
        theirs.fc = paddle.nn.Identity()
        features = truncate_after(ours, "flatten")(x).numpy()
        assert features.shape == (2, 1280)
        assert _max_rel_diff(features, theirs(x).numpy()) < 1e-5


def test_base_shitu_variant_matches_paddleclas(ppcls, tmp_path):
    """PP-ShiTuV2's backbone: last stage at stride 1, biased last_conv, no ReLU after it."""
    theirs = ppcls["arch.backbone.variant_models.pp_lcnetv2_variant"].PPLCNetV2_base_ShiTu(
        pretrained=False, class_expand=512
    )
    ours = PPLCNetV2(size="base", class_expand=512, shitu=True)
    theirs.eval()
    report = load_pretrained(ours, randomise(theirs, tmp_path / "shitu.pdparams", seed=2))
    assert report["missing"] == [] and report["unexpected"] == []
    assert "last_conv.bias" in report["loaded"] and "stages.3.0.dw_conv_list.2.conv.weight" in report["loaded"]
    ours.eval()
    theirs.fc = paddle.nn.Identity()
    truncate_after(ours, "flatten")
    x = _images(size=32)
    with paddle.no_grad():
        features, reference = ours(x).numpy(), theirs(x).numpy()
    assert features.shape == (2, 512)
    assert (features < 0).any()  # no ReLU after last_conv
    assert _max_rel_diff(features, reference) < 1e-5


def test_large_state_dict_names_and_shapes_match_paddleclas(ppcls):
    with paddle.LazyGuard():  # names and shapes only: the parameters are never initialised
        theirs = ppcls["arch.backbone.legendary_models.pp_lcnet_v2"].PPLCNetV2_large(pretrained=False).state_dict()
        ours = PPLCNetV2(size="large").state_dict()
    assert {k: list(v.shape) for k, v in ours.items()} == {k: list(v.shape) for k, v in theirs.items()}


@pytest.mark.parametrize("shitu, stride", [(False, 32), (True, 16)])
def test_stage_channels_and_features(shitu, stride):
    model = PPLCNetV2(size="small", shitu=shitu)
    model.eval()
    maps = model.stage_features(_images(size=64))
    assert [m.shape[1] for m in maps] == model.stage_channels == [96, 192, 384, 768]
    assert [m.shape[2] for m in maps] == [16, 8, 4, 64 // stride]


def test_stop_layers_by_name():
    model = PPLCNetV2(size="small")
    names = stop_layer_names(model)
    assert names[:3] == ["stem", "stem.0", "stem.1"]
    assert {"stages.2", "stages.3.1", "avg_pool", "flatten", "fc"} <= set(names)
    model.eval()
    truncate_after(model, "stages.2")
    assert model(_images(size=64)).shape == [2, 384, 4, 4]


def test_rep_fused_conv_is_frozen_and_the_rest_trains():
    model = PPLCNetV2(size="small", class_num=5)
    frozen = [
        name for name, p in model.named_parameters() if p.stop_gradient and not name.endswith(("_mean", "_variance"))
    ]
    assert frozen == [
        f"stages.{s}.{b}.dw_conv.{p}"
        for s, b in [(2, 0), (2, 1), (2, 2), (2, 3), (3, 0), (3, 1)]
        for p in ("weight", "bias")
    ]
    model.train()
    model(_images(size=32, n=4)).sum().backward()
    assert model.stages[2][0].dw_conv_list[1].conv.weight.grad is not None
    assert model.stages[2][0].dw_conv.weight.grad is None


def test_invalid_size_lists_valid_ones():
    with pytest.raises(ValueError, match="small, base, large"):
        PPLCNetV2(size="tiny")


def test_fused_branches_give_the_same_outputs(tmp_path):
    model = PPLCNetV2(size="small", shitu=True)  # shitu: the 1x1 branch too (stride-1 first block)
    randomise(model, tmp_path / "w.pdparams", seed=4)
    model.eval()
    x = _images(size=32)
    with paddle.no_grad():
        before = model(x).numpy()
        model.fuse_branches()
        after = model(x).numpy()
    assert model.stages[3][0].fused and len(model.stages[3][0].dw_conv_list) == 3
    assert _max_rel_diff(after, before) < 1e-5
