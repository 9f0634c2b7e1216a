"""BNNeck, TanhNeck and FPNNeck: shapes, frozen BN bias, code range, multi-scale gradients."""

import recog  # noqa: F401  (sets up the runtime before paddle is imported)

# isort: split

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from recog.models.necks import BNNeck, FPNNeck, TanhNeck


def _x(n, c, seed=0, shift=0.0):
    return paddle.to_tensor((np.random.default_rng(seed).standard_normal((n, c)) * 2.0 + shift).astype("float32"))


def test_bnneck_shape_names_and_normalisation():
    neck = BNNeck(16)
    assert neck.embedding_size == 16 and neck.fc is None
    assert sorted(neck.state_dict()) == ["feat_bn._mean", "feat_bn._variance", "feat_bn.bias", "feat_bn.weight"]
    neck.train()
    x = _x(32, 16, shift=5.0)
    out = neck(x).numpy()
    assert out.shape == (32, 16)
    # training mode: batch statistics, scale 1, shift 0 -> zero mean, unit variance per channel
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(out.std(axis=0), 1.0, atol=1e-3)
    assert BNNeck(16, embedding_size=16).fc is None


def test_bnneck_bias_is_frozen():
    neck = BNNeck(8)
    assert neck.feat_bn.bias.stop_gradient and not neck.feat_bn.weight.stop_gradient
    optimizer = paddle.optimizer.SGD(learning_rate=1.0, parameters=neck.parameters())
    target = _x(16, 8, seed=1)
    for _ in range(3):
        loss = ((neck(_x(16, 8)) - target - 3.0) ** 2).mean()  # wants a shift of +3
        loss.backward()
        assert neck.feat_bn.bias.grad is None
        optimizer.step()
        optimizer.clear_grad()
    np.testing.assert_array_equal(neck.feat_bn.bias.numpy(), np.zeros(8, "float32"))
    assert np.abs(neck.feat_bn.weight.numpy() - 1.0).max() > 1e-3  # the scale did train


def test_bnneck_matches_paddle_batchnorm1d():
    # Same outputs, running statistics and gradients as a fully trainable nn.BatchNorm1D.
    neck, reference = BNNeck(8), paddle.nn.BatchNorm1D(8, momentum=0.9, epsilon=1e-5)
    rng = np.random.default_rng(2)
    scale = rng.uniform(0.5, 2.0, 8).astype("float32")
    neck.feat_bn.weight.set_value(scale)
    reference.weight.set_value(scale)
    g = paddle.to_tensor(rng.standard_normal((16, 8)).astype("float32"))
    for step in range(2):
        x = _x(16, 8, seed=10 + step, shift=4.0)
        a, b = paddle.to_tensor(x.numpy(), stop_gradient=False), paddle.to_tensor(x.numpy(), stop_gradient=False)
        out_neck, out_ref = neck(a), reference(b)
        np.testing.assert_allclose(out_neck.numpy(), out_ref.numpy(), rtol=1e-5, atol=1e-5)
        (out_neck * g).sum().backward()
        (out_ref * g).sum().backward()
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(
            neck.feat_bn.weight.grad.numpy(), reference.weight.grad.numpy(), rtol=1e-4, atol=1e-4
        )
        neck.clear_gradients()
        reference.clear_gradients()
    for name in ("_mean", "_variance"):
        np.testing.assert_allclose(getattr(neck.feat_bn, name).numpy(), getattr(reference, name).numpy(), rtol=1e-5)
    assert np.abs(neck.feat_bn._mean.numpy()).min() > 0.5  # the statistics did move
    neck.eval()
    reference.eval()
    x = _x(5, 8, seed=20)
    np.testing.assert_allclose(neck(x).numpy(), reference(x).numpy(), rtol=1e-5, atol=1e-5)


def test_bnneck_with_projection():
    neck = BNNeck(16, embedding_size=6)
    assert neck.embedding_size == 6
    assert list(neck.fc.weight.shape) == [16, 6]
    assert neck(_x(4, 16)).shape == [4, 6]
    assert neck(_x(4, 16).reshape([4, 16, 1, 1])).shape == [4, 6]  # [N, C, 1, 1] is flattened


def test_tanh_neck_range_and_formula():
    neck = TanhNeck(10)
    assert neck.embedding_size == 48
    x = _x(20, 10) * 50.0  # large inputs: saturates, must stay within [-1, 1]
    out = neck(x).numpy()
    assert out.shape == (20, 48)
    assert np.abs(out).max() <= 1.0 and np.abs(out).max() > 0.99
    x = _x(5, 10)
    expected = np.tanh(x.numpy().astype(np.float64) @ neck.fc.weight.numpy() + neck.fc.bias.numpy())
    np.testing.assert_allclose(neck(x).numpy(), expected, rtol=1e-5, atol=1e-6)
    assert (neck(x).numpy() < 0).any() and (neck(x).numpy() > 0).any()  # signed codes


STAGES = [(8, 16, 16), (16, 8, 8), (32, 3, 3)]  # (channels, H, W), finest first; 8 -> 3 is not 2x


def _stage_maps(n=2, seed=0):
    rng = np.random.default_rng(seed)
    return [
        paddle.to_tensor(rng.standard_normal((n, c, h, w)).astype("float32"), stop_gradient=False) for c, h, w in STAGES
    ]


def test_fpn_shape_and_gradients_reach_every_level():
    neck = FPNNeck([c for c, _, _ in STAGES], embedding_size=24, fpn_channels=12)
    assert neck.embedding_size == 24
    maps = _stage_maps()
    out = neck(maps)
    assert out.shape == [2, 24]
    F.mse_loss(out, paddle.ones_like(out)).backward()
    for i in range(len(STAGES)):
        for layer in (neck.lateral_convs[i], neck.smooth_convs[i]):
            grad = layer.weight.grad
            assert grad is not None and np.abs(grad.numpy()).sum() > 0
        assert np.abs(maps[i].grad.numpy()).sum() > 0
    assert np.abs(neck.fc.weight.grad.numpy()).sum() > 0


def test_fpn_matches_a_direct_computation():
    neck = FPNNeck([c for c, _, _ in STAGES], embedding_size=10, fpn_channels=4)
    maps = _stage_maps(seed=3)
    lat = [conv(x) for conv, x in zip(neck.lateral_convs, maps)]
    p2 = lat[2]
    # nearest 3 -> 8: source index floor(i * 3 / 8)
    idx = (np.arange(8) * 3) // 8
    p1 = lat[1].numpy() + p2.numpy()[:, :, idx][:, :, :, idx]
    idx = (np.arange(16) * 8) // 16
    p0 = lat[0].numpy() + p1[:, :, idx][:, :, :, idx]
    pooled = [
        neck.smooth_convs[i](paddle.to_tensor(p)).numpy().mean(axis=(2, 3)) for i, p in enumerate([p0, p1, p2.numpy()])
    ]
    expected = np.concatenate(pooled, axis=1) @ neck.fc.weight.numpy() + neck.fc.bias.numpy()
    np.testing.assert_allclose(neck(maps).numpy(), expected, rtol=1e-4, atol=1e-5)


def test_fpn_rejects_a_wrong_number_of_maps():
    neck = FPNNeck([8, 16, 32])
    with pytest.raises(ValueError, match="3 stage feature maps"):
        neck(_stage_maps()[:2])
    with pytest.raises(ValueError, match="3 stage feature maps"):
        neck(_stage_maps()[0])
