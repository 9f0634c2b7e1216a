"""ViT / DeiT against PaddleClas 2.6.0's VisionTransformer (the oracle wheel), and its layout."""

import recog  # noqa: F401  (sets up the runtime before paddle is imported)

# isort: split

import cv2
import numpy as np
import paddle
import pytest
from paddleclas_oracle import import_ppcls, randomise

from recog.models.backbones.vit import DropPath, ViT
from recog.models.stop_layer import stop_layer_names, truncate_after
from recog.models.weights import load_pretrained

VIT = "arch.backbone.model_zoo.vision_transformer"
DEIT = "arch.backbone.model_zoo.distilled_vision_transformer"


@pytest.fixture(scope="module")
def ppcls(tmp_path_factory):
    return import_ppcls(tmp_path_factory.mktemp("paddleclas"), VIT, DEIT)


def _images(h=32, w=32, n=2, seed=1):
    return paddle.to_tensor(np.random.default_rng(seed).standard_normal((n, 3, h, w)).astype("float32"))


def _max_rel_diff(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_tiny_matches_paddleclas(ppcls, tmp_path):
    """DeiT-Ti's configuration of PaddleClas's VisionTransformer, on 32x32 inputs (a 2x2 grid)."""
    theirs = ppcls[VIT].VisionTransformer(
        img_size=32, patch_size=16, embed_dim=192, depth=12, num_heads=3, mlp_ratio=4, qkv_bias=True, epsilon=1e-6
    )
    ours = ViT(size="tiny", patch_size=16, img_size=32)
    theirs.eval()
    report = load_pretrained(ours, randomise(theirs, tmp_path / "vit.pdparams"))
    assert report["missing"] == [] and report["unexpected"] == [] and "pos_embed" in report["loaded"]
    ours.eval()
    x = _images()
    with paddle.no_grad():
        logits, reference = ours(x).numpy(), theirs(x).numpy()
        assert logits.shape == (2, 1000) and np.abs(reference).max() > 1e-2
        assert _max_rel_diff(logits, reference) < 1e-5
        features = truncate_after(ours, "pool")(x).numpy()  # the class token after the final norm
        assert features.shape == (2, 192)
        assert _max_rel_diff(features, theirs.forward_features(x).numpy()) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("size, factory", [("tiny", "DeiT_tiny_patch16_224"), ("small", "DeiT_small_patch16_224")])
def test_released_layout_names_and_shapes_match_paddleclas(ppcls, size, factory):
    with paddle.LazyGuard():  # names and shapes only: the parameters are never initialised (~0.6 s each)
        theirs = getattr(ppcls[DEIT], factory)(pretrained=False).state_dict()
        ours = ViT(size=size).state_dict()
    assert {k: list(v.shape) for k, v in ours.items()} == {k: list(v.shape) for k, v in theirs.items()}
    assert list(ours["pos_embed"].shape) == [1, 197, {"tiny": 192, "small": 384}[size]]


def test_position_embeddings_resized_bicubically():
    """The patch grid's embeddings are resized like an image (OpenCV's bicubic, half-pixel
    centres, replicated border: the same convention); the class token's is kept."""
    model = ViT(size="tiny", img_size=32)  # a 2x2 grid
    table = model.pos_embed.numpy()[0]  # [1 + 4, 192]
    resized = model.position_embeddings(3, 5).numpy()[0]
    assert resized.shape == (1 + 15, 192)
    np.testing.assert_array_equal(resized[0], table[0])
    grid = table[1:].reshape(2, 2, 192)
    expected = np.stack([cv2.resize(grid[:, :, c], (5, 3), interpolation=cv2.INTER_CUBIC) for c in range(192)], -1)
    np.testing.assert_allclose(resized[1:].reshape(3, 5, 192), expected, rtol=1e-4, atol=1e-5)
    assert model.position_embeddings(2, 2) is model.pos_embed


@pytest.mark.parametrize("h, w, tokens", [(32, 32, 4), (48, 80, 15), (50, 47, 6)])
def test_any_input_size(h, w, tokens):
    model = ViT(size="tiny", img_size=32)
    model.eval()
    truncate_after(model, "norm")
    x = _images(h, w)
    assert model(x).shape == [2, 1 + tokens, 192]  # rows/columns past the last whole patch are dropped


def test_too_small_input_is_refused():
    with pytest.raises(ValueError, match="smaller than one 16-pixel patch"):
        ViT(size="tiny", img_size=32)(_images(8, 32))


def test_mean_pool_is_the_mean_of_patch_tokens():
    paddle.seed(0)
    model = ViT(size="tiny", img_size=32, pool="mean")
    model.eval()
    names = stop_layer_names(model)
    assert names[:3] == ["patch_embed", "pos_drop", "blocks"] and names[-3:] == ["norm", "pool", "head"]
    x = _images(48, 48)
    with paddle.no_grad():
        tokens = truncate_after(ViT(size="tiny", img_size=32), "norm")
        tokens.set_state_dict(model.state_dict())
        tokens.eval()
        expected = tokens(x).numpy()[:, 1:].mean(axis=1)
        np.testing.assert_allclose(truncate_after(model, "pool")(x).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_drop_path_rates_rise_linearly_and_only_act_in_training():
    model = ViT(size="tiny", img_size=32, drop_path=0.3)
    rates = [block.drop_path.rate for block in model.blocks]
    np.testing.assert_allclose(rates, np.linspace(0, 0.3, 12), atol=1e-7)
    truncate_after(model, "pool")
    x = _images(n=8)
    model.eval()
    a, b = model(x).numpy(), model(x).numpy()
    np.testing.assert_array_equal(a, b)
    model.train()
    paddle.seed(1)
    assert np.abs(model(x).numpy() - a).max() > 1e-3


def test_drop_path_zeroes_whole_samples_and_rescales():
    layer = DropPath(0.25)
    layer.train()
    paddle.seed(0)
    out = layer(paddle.ones([2000, 3, 2])).numpy()
    per_sample = out.reshape(2000, -1)
    assert (per_sample == per_sample[:, :1]).all()  # one decision per sample
    assert set(np.unique(out)) == {0.0, np.float32(1 / 0.75)}
    assert abs((per_sample[:, 0] == 0).mean() - 0.25) < 0.04
    layer.eval()
    np.testing.assert_array_equal(layer(paddle.ones([4, 3])).numpy(), np.ones((4, 3)))


@pytest.mark.parametrize(
    "kwargs, message",
    [({"size": "huge"}, "tiny, small, base"), ({"drop_path": 1.0}, "drop_path"), ({"pool": "max"}, "'cls' or 'mean'")],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ViT(img_size=32, **kwargs)


@pytest.mark.slow
def test_exports_with_a_dynamic_batch_size(tmp_path):
    """paddle.jit.save as stage=export does it: batch dimension None, fixed image size."""
    model = truncate_after(ViT(size="tiny", img_size=32), "pool")
    model.eval()
    spec = paddle.static.InputSpec([None, 3, 48, 48], "float32", name="x")
    paddle.jit.save(model, str(tmp_path / "inference"), input_spec=[spec])
    loaded = paddle.jit.load(str(tmp_path / "inference"))
    x = _images(48, 48, n=3)
    with paddle.no_grad():
        np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)
