import recog  # noqa: F401  (sets up the runtime before paddle is imported)

# isort: split

import numpy as np
import paddle
import pytest

from recog.models.backbones import PPLCNet
from recog.models.stop_layer import truncate_after

SCALES = [0.25, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5]

# Params(M) per scale as published in PaddleClas's model zoo table (docs/zh_CN/.../ImageNet_models.md).
PADDLECLAS_PARAMS_M = {0.25: 1.52, 0.35: 1.65, 0.5: 1.89, 0.75: 2.37, 1.0: 2.96, 1.5: 4.52, 2.0: 6.54, 2.5: 9.04}
# Output channels of conv1, blocks2, blocks6: make_divisible(16|32|512 * scale, 8). At x0.35,
# 32 * 0.35 = 11.2 rounds to 8, more than 10% below, so make_divisible bumps it to 16.
WIDTHS = {
    0.25: (8, 8, 128),
    0.35: (8, 16, 176),
    0.5: (8, 16, 256),
    0.75: (16, 24, 384),
    1.0: (16, 32, 512),
    1.5: (24, 48, 768),
    2.0: (32, 64, 1024),
    2.5: (40, 80, 1280),
}

# conv1 (5 entries) + 13 depthwise-separable blocks x 10 (dw and pw ConvBN, 5 each)
# + 2 SE blocks x 4 + last_conv.weight + fc.weight/bias.
STATE_DICT_SIZE = 5 + 13 * 10 + 2 * 4 + 1 + 2

# Expected shapes derived from PaddleClas's pp_lcnet.py (NET_CONFIG + make_divisible).
EXPECTED_X0_25 = {
    "conv1.conv.weight": [8, 3, 3, 3],
    "conv1.bn.weight": [8],
    "conv1.bn.bias": [8],
    "conv1.bn._mean": [8],
    "conv1.bn._variance": [8],
    "blocks2.0.dw_conv.conv.weight": [8, 1, 3, 3],
    "blocks2.0.dw_conv.bn._mean": [8],
    "blocks2.0.pw_conv.conv.weight": [8, 8, 1, 1],
    "blocks3.0.pw_conv.conv.weight": [16, 8, 1, 1],
    "blocks4.1.dw_conv.conv.weight": [32, 1, 3, 3],
    "blocks5.0.dw_conv.conv.weight": [32, 1, 3, 3],
    "blocks5.1.dw_conv.conv.weight": [64, 1, 5, 5],
    "blocks5.5.pw_conv.bn._variance": [64],
    "blocks6.0.dw_conv.conv.weight": [64, 1, 5, 5],
    "blocks6.0.se.conv1.weight": [16, 64, 1, 1],
    "blocks6.0.se.conv1.bias": [16],
    "blocks6.0.se.conv2.weight": [64, 16, 1, 1],
    "blocks6.0.se.conv2.bias": [64],
    "blocks6.0.pw_conv.conv.weight": [128, 64, 1, 1],
    "blocks6.1.se.conv1.weight": [32, 128, 1, 1],
    "blocks6.1.pw_conv.conv.weight": [128, 128, 1, 1],
    "last_conv.weight": [1280, 128, 1, 1],
    "fc.weight": [1280, 1000],
    "fc.bias": [1000],
}
EXPECTED_X2_5 = {
    "conv1.conv.weight": [40, 3, 3, 3],
    "conv1.bn._mean": [40],
    "blocks2.0.dw_conv.conv.weight": [40, 1, 3, 3],
    "blocks2.0.pw_conv.conv.weight": [80, 40, 1, 1],
    "blocks3.1.dw_conv.conv.weight": [160, 1, 3, 3],
    "blocks4.0.pw_conv.conv.weight": [320, 160, 1, 1],
    "blocks5.0.dw_conv.conv.weight": [320, 1, 3, 3],
    "blocks5.0.pw_conv.conv.weight": [640, 320, 1, 1],
    "blocks5.5.dw_conv.conv.weight": [640, 1, 5, 5],
    "blocks5.5.dw_conv.bn.weight": [640],
    "blocks6.0.se.conv1.weight": [160, 640, 1, 1],
    "blocks6.0.se.conv2.weight": [640, 160, 1, 1],
    "blocks6.0.pw_conv.conv.weight": [1280, 640, 1, 1],
    "blocks6.1.dw_conv.conv.weight": [1280, 1, 5, 5],
    "blocks6.1.se.conv1.weight": [320, 1280, 1, 1],
    "blocks6.1.se.conv2.bias": [1280],
    "last_conv.weight": [1280, 1280, 1, 1],
    "fc.weight": [1280, 1000],
    "fc.bias": [1000],
}


def _images(n=2, size=32):
    return paddle.to_tensor(np.random.default_rng(0).standard_normal((n, 3, size, size)).astype("float32"))


@pytest.mark.parametrize("scale", SCALES)
def test_shapes_and_size_per_scale(scale):
    model = PPLCNet(scale=scale)
    model.eval()
    x = _images()
    assert model(x).shape == [2, 1000]
    # Paddle counts BN running mean/variance as (non-trainable) parameters, as PaddleClas's table does.
    n_params = sum(int(p.numel()) for p in model.parameters())
    assert round(n_params / 1e6, 2) == PADDLECLAS_PARAMS_M[scale]
    state = model.state_dict()
    widths = tuple(state[f"{k}.conv.weight"].shape[0] for k in ("conv1", "blocks2.0.pw_conv", "blocks6.1.pw_conv"))
    assert widths == WIDTHS[scale]

    truncate_after(model, "flatten")
    assert model(x).shape == [2, 1280]


def test_class_num_sets_logits():
    model = PPLCNet(scale=0.25, class_num=7)
    model.eval()
    assert model(_images()).shape == [2, 7]


@pytest.mark.parametrize("scale, expected", [(0.25, EXPECTED_X0_25), (2.5, EXPECTED_X2_5)])
def test_state_dict_names_and_shapes_match_paddleclas(scale, expected):
    state = PPLCNet(scale=scale).state_dict()
    assert {name: list(state[name].shape) for name in expected if name in state} == expected
    assert len(state) == STATE_DICT_SIZE == 146
    # SE only in blocks6; last_conv has no bias; ConvBN convs have no bias.
    assert not any(".se." in k for k in state if not k.startswith("blocks6."))
    assert "last_conv.bias" not in state
    assert not any(k.endswith("conv.bias") for k in state)


def test_eval_dropout_downscales_by_keep_probability():
    paddle.seed(0)
    model = PPLCNet(scale=0.25)
    before_dropout = PPLCNet(scale=0.25)
    before_dropout.set_state_dict(model.state_dict())
    truncate_after(model, "dropout")
    truncate_after(before_dropout, "hardswish")
    model.eval()
    before_dropout.eval()
    x = _images()

    a, b = model(x).numpy(), before_dropout(x).numpy()
    assert a.shape == b.shape == (2, 1280, 1, 1)
    # Randomly initialised features are tiny here, so compare relatively (atol=0).
    assert np.count_nonzero(b) > 0
    np.testing.assert_allclose(a, 0.8 * b, rtol=1e-6, atol=0)

    # While training, kept activations are not rescaled (they are either 0 or unchanged).
    model.train()
    dropped = model.dropout(paddle.to_tensor(np.ones((4, 1280, 1, 1), "float32"))).numpy()
    assert set(np.unique(dropped)) <= {0.0, 1.0}
    assert 0 < (dropped == 0).mean() < 0.5


@pytest.mark.parametrize("scale", [0.3, 3.0])
def test_invalid_scale_lists_valid_ones(scale):
    with pytest.raises(ValueError, match=r"0\.25, 0\.35, 0\.5, 0\.75, 1\.0, 1\.5, 2\.0, 2\.5"):
        PPLCNet(scale=scale)
