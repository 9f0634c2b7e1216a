import recog  # noqa: F401  (sets up the runtime before paddle is imported)

# isort: split

import numpy as np
import paddle
import pytest
from paddle.vision import models as pv

from recog.models.backbones import VisionMobileNetV3, VisionResNet
from recog.models.stop_layer import stop_layer_names, truncate_after

RESNETS = {18: pv.resnet18, 34: pv.resnet34, 50: pv.resnet50, 101: pv.resnet101, 152: pv.resnet152}
MOBILENETS = {"small": pv.mobilenet_v3_small, "large": pv.mobilenet_v3_large}


def _images(seed=0):
    return paddle.to_tensor(np.random.default_rng(seed).standard_normal((2, 3, 32, 32)).astype("float32"))


def _shapes(model):
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def _copy_into(wrapper, original):
    """Give ``wrapper`` the original's weights by name; every name must match both ways."""
    state = original.state_dict()
    assert _shapes(wrapper) == {k: list(v.shape) for k, v in state.items()}
    missing, unexpected = wrapper.set_state_dict(state)
    assert not missing and not unexpected


def _assert_close(a, b):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)


# ---- ResNet -----------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("depth", [18, 50])
def test_resnet_matches_paddle_vision(depth):
    paddle.seed(1)
    original = RESNETS[depth](pretrained=False, num_classes=10)
    wrapper = VisionResNet(depth, class_num=10)
    _copy_into(wrapper, original)
    original.eval()
    wrapper.eval()
    x = _images()
    expected = original(x)
    assert expected.shape == [2, 10]
    _assert_close(wrapper(x), expected)


@pytest.mark.parametrize("depth", [34, 101, 152])
def test_resnet_names_match_paddle_vision(depth):
    # Layout only (no forward): parameters declared lazily, never initialised.
    with paddle.LazyGuard():
        original = RESNETS[depth](pretrained=False)
        wrapper = VisionResNet(depth)
    assert _shapes(wrapper) == _shapes(original)
    assert wrapper.out_channels == (512 if depth == 34 else 2048)


def test_resnet_stop_layer_names():
    names = stop_layer_names(VisionResNet(18))
    assert names[:5] == ["conv1", "bn1", "relu", "maxpool", "layer1"]
    assert names[-3:] == ["avgpool", "flatten", "fc"]
    assert [n for n in names if n.startswith("layer3")] == ["layer3", "layer3.0", "layer3.1"]
    assert len(names) == 11 + 4 * 2  # direct children + blocks


@pytest.mark.slow
@pytest.mark.parametrize("depth, width", [(18, 512), (50, 2048)])
def test_resnet_truncate_after_flatten(depth, width):
    paddle.seed(2)
    headless = RESNETS[depth](pretrained=False, num_classes=0)  # ends at avgpool: [N, C, 1, 1]
    wrapper = VisionResNet(depth, class_num=10)
    truncate_after(wrapper, "flatten")
    assert "fc.weight" not in wrapper.state_dict()
    _copy_into(wrapper, headless)
    headless.eval()
    wrapper.eval()
    x = _images()
    features = wrapper(x)
    assert features.shape == [2, width]
    _assert_close(features, headless(x).reshape([2, width]))


def test_resnet_truncate_after_block():
    wrapper = VisionResNet(50)
    wrapper.eval()
    truncate_after(wrapper, "layer3.2")
    keys = wrapper.state_dict()
    assert "layer3.2.conv1.weight" in keys and "layer3.3.conv1.weight" not in keys
    assert not any(k.startswith(("layer4", "fc")) for k in keys)
    assert wrapper(_images()).shape == [2, 1024, 2, 2]


def test_resnet_without_classifier():
    wrapper = VisionResNet(18, class_num=0)
    assert "fc" not in dict(wrapper.named_children())
    assert wrapper(_images()).shape == [2, 512]


def test_resnet_invalid_depth():
    with pytest.raises(ValueError, match="18, 34, 50, 101, 152"):
        VisionResNet(depth=20)


# ---- MobileNetV3 ------------------------------------------------------------------------------
@pytest.mark.parametrize("size, scale", [("small", 1.0), ("large", 1.0), ("small", 0.5)])
def test_mobilenet_matches_paddle_vision(size, scale):
    paddle.seed(3)
    original = MOBILENETS[size](pretrained=False, scale=scale, num_classes=10)
    wrapper = VisionMobileNetV3(size, scale=scale, class_num=10)
    _copy_into(wrapper, original)
    original.eval()
    wrapper.eval()
    x = _images()
    expected = original(x)
    assert expected.shape == [2, 10]
    _assert_close(wrapper(x), expected)


def test_mobilenet_stop_layer_names():
    names = stop_layer_names(VisionMobileNetV3("small"))
    children = [n for n in names if "." not in n]
    assert children == ["conv", "blocks", "lastconv", "avgpool", "flatten", "classifier"]
    assert [n for n in names if n.startswith("blocks.")] == [f"blocks.{i}" for i in range(11)]
    assert names[-4:] == ["classifier.0", "classifier.1", "classifier.2", "classifier.3"]


@pytest.mark.parametrize("size, width, embedding", [("small", 576, 1024), ("large", 960, 1280)])
def test_mobilenet_truncation(size, width, embedding):
    paddle.seed(4)
    headless = MOBILENETS[size](pretrained=False, num_classes=0)  # ends at avgpool
    wrapper = VisionMobileNetV3(size)
    assert wrapper.out_channels == width
    wrapper.eval()
    headless.eval()
    x = _images()

    truncate_after(wrapper, "classifier.1")  # pre-logit embedding (Linear + Hardswish)
    assert wrapper(x).shape == [2, embedding]
    assert "classifier.3.weight" not in wrapper.state_dict()

    truncate_after(wrapper, "flatten")
    assert not any(k.startswith("classifier") for k in wrapper.state_dict())
    _copy_into(wrapper, headless)
    features = wrapper(x)
    assert features.shape == [2, width]
    _assert_close(features, headless(x).reshape([2, width]))


def test_mobilenet_invalid_arguments():
    with pytest.raises(ValueError, match="small, large"):
        VisionMobileNetV3("medium")
    with pytest.raises(ValueError, match="positive"):
        VisionMobileNetV3("small", scale=0)
