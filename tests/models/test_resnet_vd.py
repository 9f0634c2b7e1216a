import recog  # noqa: F401  (sets up the runtime before paddle is imported)

# isort: split

import functools
import math

import numpy as np
import paddle
import pytest

from recog.models.backbones import ResNetVd
from recog.models.stop_layer import stop_layer_names, truncate_after

DEPTHS = [18, 34, 50, 101, 152]

# Params(M) as published in PaddleClas's model zoo (docs/zh_CN/models/ImageNet1k/ResNet.md).
PADDLECLAS_PARAMS_M = {18: 11.71, 34: 21.82, 50: 25.58, 101: 44.57, 152: 60.21}

# Last block of each stage: PaddleClas's MODEL_STAGES_PATTERN (legendary_models/resnet.py).
STAGE_ENDS = {18: [1, 3, 5, 7], 34: [2, 6, 12, 15], 50: [2, 6, 12, 15], 101: [2, 6, 29, 32], 152: [2, 10, 46, 49]}
BOTTLENECK = {18: False, 34: False, 50: True, 101: True, 152: True}


def _n_blocks(depth):
    return STAGE_ENDS[depth][-1] + 1


def _expected_key_count(depth):
    # Every conv+BN unit has 5 entries (conv.weight, bn.weight/bias/_mean/_variance):
    # 3 in the stem, 2 (basic) or 3 (bottleneck) per block, 1 per projection shortcut
    # (the first block of each of the 4 stages); plus fc.weight/bias.
    per_block = 3 if BOTTLENECK[depth] else 2
    return 5 * (3 + per_block * _n_blocks(depth) + 4) + 2


# PaddleClas ResNet*_vd layout: stem 3->32 (s2), 32->32, 32->64; blocks numbered across stages;
# each stage's first block has `short` (1x1 conv + BN); fc from 512 (basic) or 2048 inputs.
COMMON_STEM = {
    "stem.0.conv.weight": [32, 3, 3, 3],
    "stem.0.bn.weight": [32],
    "stem.0.bn.bias": [32],
    "stem.0.bn._mean": [32],
    "stem.0.bn._variance": [32],
    "stem.1.conv.weight": [32, 32, 3, 3],
    "stem.2.conv.weight": [64, 32, 3, 3],
    "stem.2.bn._variance": [64],
}
EXPECTED = {
    18: {
        "blocks.0.conv0.conv.weight": [64, 64, 3, 3],
        "blocks.0.conv1.conv.weight": [64, 64, 3, 3],
        "blocks.0.short.conv.weight": [64, 64, 1, 1],  # PaddleClas projects in stage 1 too
        "blocks.0.short.bn._mean": [64],
        "blocks.1.conv0.bn.weight": [64],
        "blocks.2.conv0.conv.weight": [128, 64, 3, 3],
        "blocks.2.short.conv.weight": [128, 64, 1, 1],
        "blocks.4.short.conv.weight": [256, 128, 1, 1],
        "blocks.6.short.conv.weight": [512, 256, 1, 1],
        "blocks.7.conv1.conv.weight": [512, 512, 3, 3],
        "blocks.7.conv1.bn._variance": [512],
        "fc.weight": [512, 1000],
        "fc.bias": [1000],
    },
    34: {
        "blocks.0.short.conv.weight": [64, 64, 1, 1],
        "blocks.3.conv0.conv.weight": [128, 64, 3, 3],
        "blocks.3.short.conv.weight": [128, 64, 1, 1],
        "blocks.7.short.conv.weight": [256, 128, 1, 1],
        "blocks.13.short.conv.weight": [512, 256, 1, 1],
        "blocks.15.conv1.conv.weight": [512, 512, 3, 3],
        "fc.weight": [512, 1000],
        "fc.bias": [1000],
    },
    50: {
        "blocks.0.conv0.conv.weight": [64, 64, 1, 1],
        "blocks.0.conv1.conv.weight": [64, 64, 3, 3],
        "blocks.0.conv2.conv.weight": [256, 64, 1, 1],
        "blocks.0.conv2.bn.bias": [256],
        "blocks.0.short.conv.weight": [256, 64, 1, 1],
        "blocks.0.short.bn._variance": [256],
        "blocks.1.conv0.conv.weight": [64, 256, 1, 1],
        "blocks.3.conv0.conv.weight": [128, 256, 1, 1],
        "blocks.3.conv1.conv.weight": [128, 128, 3, 3],
        "blocks.3.short.conv.weight": [512, 256, 1, 1],
        "blocks.7.short.conv.weight": [1024, 512, 1, 1],
        "blocks.13.conv0.conv.weight": [512, 1024, 1, 1],
        "blocks.13.short.conv.weight": [2048, 1024, 1, 1],
        "blocks.15.conv2.conv.weight": [2048, 512, 1, 1],
        "blocks.15.conv2.bn._mean": [2048],
        "fc.weight": [2048, 1000],
        "fc.bias": [1000],
    },
    101: {
        "blocks.7.short.conv.weight": [1024, 512, 1, 1],
        "blocks.29.conv2.conv.weight": [1024, 256, 1, 1],
        "blocks.30.short.conv.weight": [2048, 1024, 1, 1],
        "blocks.32.conv2.conv.weight": [2048, 512, 1, 1],
        "fc.weight": [2048, 1000],
    },
    152: {
        "blocks.3.short.conv.weight": [512, 256, 1, 1],
        "blocks.11.short.conv.weight": [1024, 512, 1, 1],
        "blocks.46.conv2.conv.weight": [1024, 256, 1, 1],
        "blocks.47.short.conv.weight": [2048, 1024, 1, 1],
        "blocks.49.conv2.bn.weight": [2048],
        "fc.weight": [2048, 1000],
    },
}


@functools.cache
def _lazy_model(depth):
    """A default ResNetVd(depth) whose parameters are declared but never initialised
    (``LazyGuard``): enough for names and shapes, and fast even for depth 152."""
    with paddle.LazyGuard():
        return ResNetVd(depth)


def _shapes(depth):
    """name -> (shape, trainable) of a default ResNetVd(depth)."""
    model = _lazy_model(depth)
    trainable = {p.name for p in model.parameters() if not p.stop_gradient}
    return {k: (list(v.shape), v.name in trainable) for k, v in model.state_dict().items()}


def _images(size=32, seed=0):
    return paddle.to_tensor(np.random.default_rng(seed).standard_normal((2, 3, size, size)).astype("float32"))


@pytest.mark.parametrize("depth", DEPTHS)
def test_state_dict_matches_paddleclas_layout(depth):
    shapes = _shapes(depth)
    assert len(shapes) == _expected_key_count(depth)
    for name, shape in {**COMMON_STEM, **EXPECTED[depth]}.items():
        assert shapes[name][0] == shape, name
    # Blocks are numbered continuously across stages, and only stage-opening blocks project.
    blocks = {int(k.split(".")[1]) for k in shapes if k.startswith("blocks.")}
    assert blocks == set(range(_n_blocks(depth)))
    with_short = sorted({int(k.split(".")[1]) for k in shapes if ".short." in k})
    assert with_short == [0] + [end + 1 for end in STAGE_ENDS[depth][:-1]]
    assert ("blocks.0.conv2.conv.weight" in shapes) == BOTTLENECK[depth]
    # Nothing outside stem / blocks / fc, and every key has a PaddleClas suffix.
    assert {k.split(".")[0] for k in shapes} == {"stem", "blocks", "fc"}
    suffixes = ("conv.weight", "bn.weight", "bn.bias", "bn._mean", "bn._variance")
    assert all(k.endswith(suffixes) for k in shapes if not k.startswith("fc."))


@pytest.mark.parametrize("depth", DEPTHS)
def test_parameter_count_matches_paddleclas(depth):
    shapes = _shapes(depth)
    trainable = sum(math.prod(s) for s, t in shapes.values() if t)
    assert round(trainable / 1e6, 2) == PADDLECLAS_PARAMS_M[depth]
    # BN running statistics are buffers, not trained.
    assert all(not t for k, (_, t) in shapes.items() if k.endswith(("_mean", "_variance")))


@pytest.mark.parametrize("depth", DEPTHS)
def test_stage_metadata(depth):
    model = _lazy_model(depth)
    assert model.stage_ends == STAGE_ENDS[depth]
    expansion = 4 if BOTTLENECK[depth] else 1
    assert model.stage_channels == [64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]
    assert model.out_channels == 512 * expansion


def test_invalid_depth():
    with pytest.raises(ValueError, match="18, 34, 50, 101, 152"):
        ResNetVd(depth=200)


def test_vd_rule_placement():
    # Stage 1's projection is a plain stride-1 1x1 conv; stages 2-4 average-pool then convolve
    # with stride 1; in a bottleneck the main branch downsamples in its 3x3 conv (conv1).
    for model, conv_with_stride in ((_lazy_model(50), "conv1"), (_lazy_model(18), "conv0")):
        firsts = [0] + [end + 1 for end in model.stage_ends[:-1]]
        assert model.blocks[0].short.avg_pool is None
        assert list(model.blocks[0].short.conv._stride) == [1, 1]
        for i in firsts[1:]:
            block = model.blocks[i]
            assert block.short.avg_pool is not None, i
            assert list(block.short.conv._stride) == [1, 1], i
            assert list(getattr(block, conv_with_stride).conv._stride) == [2, 2], i
        for i, block in enumerate(model.blocks):
            if i not in firsts:
                assert block.short is None, i


@functools.cache
def _stage2_shortcut():
    return ResNetVd(50).blocks[3].short


@pytest.mark.parametrize("size", [8, 7])
def test_vd_shortcut_averages_2x2_cells(size):
    # With fresh BN (eval: mean 0, var 1, weight 1, bias 0), the shortcut is a 1x1 conv of
    # 2x2 means; at odd sizes the last row/column is averaged over the cells that exist.
    short = _stage2_shortcut()
    short.eval()
    x = np.random.default_rng(1).standard_normal((2, 256, size, size)).astype("float32")
    out = short(paddle.to_tensor(x)).numpy()

    n = math.ceil(size / 2)
    pooled = np.zeros((2, 256, n, n), dtype="float64")
    for i in range(n):
        for j in range(n):
            pooled[:, :, i, j] = x[:, :, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean(axis=(2, 3))
    weight = short.conv.weight.numpy()[:, :, 0, 0]
    expected = np.einsum("oc,nchw->nohw", weight, pooled) / np.sqrt(1 + 1e-5)
    assert out.shape == (2, 512, n, n)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("depth, width", [(18, 512), (50, 2048)])
def test_forward_and_stage_shapes(depth, width):
    model = ResNetVd(depth, class_num=10)
    model.eval()
    x = _images()
    logits = model(x)
    assert logits.shape == [2, 10]
    assert np.isfinite(logits.numpy()).all()

    # Stage ends: strides 4, 8, 16, 32 -> 8, 4, 2, 1 cells at 32x32.
    with paddle.no_grad():
        h = model.max_pool(model.stem(x))
        assert h.shape == [2, 64, 8, 8]
        stage_shapes = []
        for i, block in enumerate(model.blocks):
            h = block(h)
            if i in model.stage_ends:
                stage_shapes.append(h.shape)
        features = model.stage_features(x)
    assert stage_shapes == [[2, c, s, s] for c, s in zip(model.stage_channels, [8, 4, 2, 1])]
    assert [f.shape for f in features] == stage_shapes
    assert model.stage_channels[-1] == width
    # The coarsest stage map is what the classifier pools.
    pooled = features[-1].mean(axis=[2, 3])
    np.testing.assert_allclose(model.fc(pooled).numpy(), logits.numpy(), rtol=1e-4, atol=1e-5)


def test_odd_input_size():
    # 36 -> 18 (stem) -> 9 (pool) -> 5 -> 3 -> 2: the residual branches must agree at odd sizes.
    model = ResNetVd(18, class_num=10)
    model.eval()
    truncate_after(model, "blocks")
    assert model(_images(36)).shape == [2, 512, 2, 2]


def test_stop_layer_names_order():
    names = stop_layer_names(ResNetVd(18))
    assert names == (
        ["stem", "stem.0", "stem.1", "stem.2", "max_pool", "blocks"]
        + [f"blocks.{i}" for i in range(8)]
        + ["avg_pool", "flatten", "fc"]
    )


@pytest.mark.parametrize("depth, width", [(18, 512), (50, 2048)])
def test_truncate_after_flatten(depth, width):
    model = ResNetVd(depth)
    model.eval()
    x = _images()
    full = model(x)
    fc = model.fc
    before = set(model.state_dict())
    truncate_after(model, "flatten")
    assert set(model.state_dict()) == before - {"fc.weight", "fc.bias"}
    features = model(x)
    assert features.shape == [2, width]
    # Truncation removed exactly the classifier: it maps the features to the full output.
    np.testing.assert_allclose(fc(features).numpy(), full.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "depth, path, shape",
    [(50, "blocks.7", [2, 1024, 2, 2]), (18, "blocks.7", [2, 512, 1, 1]), (50, "blocks.2", [2, 256, 8, 8])],
)
def test_truncate_after_block(depth, path, shape):
    model = ResNetVd(depth)
    model.eval()
    truncate_after(model, path)
    keys = model.state_dict()
    last = int(path.split(".")[1])
    assert f"blocks.{last}.conv0.conv.weight" in keys
    assert f"blocks.{last + 1}.conv0.conv.weight" not in keys
    assert "fc.weight" not in keys
    assert model(_images()).shape == shape
