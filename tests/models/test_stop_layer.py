import recog  # noqa: F401  (sets up the runtime before paddle is imported)

# isort: split

import numpy as np
import paddle
import pytest

from recog.errors import ConfigError
from recog.models.backbones import PPLCNet
from recog.models.stop_layer import stop_layer_names, truncate_after


def _images():
    return paddle.to_tensor(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype("float32"))


@pytest.fixture
def model():
    m = PPLCNet(scale=0.25)
    m.eval()
    return m


def test_stop_layer_names_in_forward_order(model):
    names = stop_layer_names(model)
    assert names[:3] == ["conv1", "blocks2", "blocks2.0"]
    assert names[-6:] == ["avg_pool", "last_conv", "hardswish", "dropout", "flatten", "fc"]
    assert [n for n in names if n.startswith("blocks5.")] == [f"blocks5.{i}" for i in range(6)]
    assert len(names) == 12 + 13  # direct children + depthwise-separable blocks
    assert "blocks6.0.se" not in names  # blocks are not sequential containers


def test_truncate_after_flatten(model):
    before = model.state_dict()
    assert truncate_after(model, "flatten") is model
    after = model.state_dict()
    assert "fc.weight" not in after and "fc.bias" not in after
    assert set(after) == set(before) - {"fc.weight", "fc.bias"}
    assert all(p.name != before["fc.weight"].name for p in model.parameters())
    assert model(_images()).shape == [2, 1280]
    assert stop_layer_names(model)[-1] == "flatten"


def test_truncate_after_inner_block(model):
    x = _images()
    full = PPLCNet(scale=0.25)
    full.set_state_dict(model.state_dict())
    full.eval()
    expected = full.blocks5[2](
        full.blocks5[1](full.blocks5[0](full.blocks4(full.blocks3(full.blocks2(full.conv1(x))))))
    )

    dropped = ("blocks5.3.", "blocks5.4.", "blocks5.5.", "blocks6.", "last_conv.", "fc.")
    kept = {k: v.numpy() for k, v in model.state_dict().items() if not k.startswith(dropped)}
    truncate_after(model, "blocks5.2")
    state = model.state_dict()

    assert len(model.blocks5) == 3
    assert [n for n, _ in model.named_children()] == ["conv1", "blocks2", "blocks3", "blocks4", "blocks5"]
    assert set(state) == set(kept)
    assert "blocks5.2.pw_conv.conv.weight" in state and "blocks5.3.dw_conv.conv.weight" not in state
    for k, v in kept.items():  # same names, same values
        np.testing.assert_array_equal(state[k].numpy(), v)
    assert sum(int(p.numel()) for p in model.parameters()) == sum(v.size for v in kept.values())

    out = model(x)
    assert out.shape == [2, 64, 2, 2]  # x0.25 blocks5 width 64, stride 16
    np.testing.assert_allclose(out.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("path", [None, ""])
def test_empty_path_is_a_no_op(model, path):
    n = len(model.state_dict())
    assert truncate_after(model, path) is model
    assert len(model.state_dict()) == n == 146


@pytest.mark.parametrize("path", ["flaten", "blocks5.9", "blocks6.0.se", "fc.weight"])
def test_unknown_path_lists_valid_names(model, path):
    with pytest.raises(ConfigError) as info:
        truncate_after(model, path)
    message = str(info.value)
    assert f"stop_layer '{path}' is not a layer of PPLCNet" in message
    assert "valid names: conv1, blocks2, blocks2.0, blocks3, " in message
    assert message.endswith("dropout, flatten, fc")
    assert len(model.state_dict()) == 146  # nothing was removed
