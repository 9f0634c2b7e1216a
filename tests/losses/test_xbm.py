import numpy as np
import paddle
import pytest

import recog  # noqa: F401
from recog.errors import ConfigError
from recog.losses import XBM, ContrastiveLoss, PairwiseCosface

D = 4


def _batch(n=6, seed=0, classes=3):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, D)).astype(np.float32), rng.integers(0, classes, size=n).astype(np.int64)


def _contrastive_ref(x, labels, margin, refs=None, ref_labels=None):
    """float64 contrastive loss (see test_contrastive.py), vectorised."""

    def unit(v):
        v = v.astype(np.float64)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    x = unit(x)
    in_batch = refs is None
    refs, ref_labels = (x, labels) if in_batch else (unit(refs), ref_labels)
    sim = x @ refs.T
    same = labels[:, None] == ref_labels[None, :]
    pos = same & ~np.eye(len(x), len(refs), dtype=bool) if in_batch else same
    return float(((1 - sim) * pos).sum() + (np.maximum(sim - margin, 0) * ~same).sum()) / len(x)


def _run(xbm, x, y, grad=False):
    xt = paddle.to_tensor(x, stop_gradient=not grad)
    return xt, xbm(xt, paddle.to_tensor(y))


def test_memory_fills_fifo_and_wraps():
    xbm = XBM(ContrastiveLoss(), memory_size=10, feat_dim=D)
    batches = [_batch(n=4, seed=s) for s in range(4)]
    seen_x = np.concatenate([b[0] for b in batches])
    seen_y = np.concatenate([b[1] for b in batches])
    for step, (x, y) in enumerate(batches):
        _run(xbm, x, y)
        total = 4 * (step + 1)
        feats, labels = xbm.memory()
        np.testing.assert_array_equal(feats.numpy(), seen_x[max(0, total - 10) : total])
        np.testing.assert_array_equal(labels.numpy(), seen_y[max(0, total - 10) : total])
    assert xbm.filled == 10 and xbm.ptr == 16 % 10
    # Raw buffer: rows 0-5 were overwritten by samples 10-15, rows 6-9 still hold samples 6-9.
    np.testing.assert_array_equal(xbm.memory_features.numpy(), np.concatenate([seen_x[10:16], seen_x[6:10]]))


def test_batch_larger_than_memory_keeps_its_newest_rows():
    xbm = XBM(ContrastiveLoss(), memory_size=3, feat_dim=D)
    x, y = _batch(n=5, seed=1)
    _run(xbm, x, y)
    feats, labels = xbm.memory()
    np.testing.assert_array_equal(feats.numpy(), x[2:])
    np.testing.assert_array_equal(labels.numpy(), y[2:])


def test_empty_memory_gives_the_in_batch_loss():
    x, y = _batch(seed=2)
    xbm = XBM(ContrastiveLoss(0.3), memory_size=16, feat_dim=D)
    _, loss = _run(xbm, x, y)
    plain = ContrastiveLoss(0.3)(paddle.to_tensor(x), paddle.to_tensor(y))
    assert float(loss) == float(plain)
    assert abs(float(loss) - _contrastive_ref(x, y, 0.3)) / float(loss) < 1e-5


def test_memory_term_matches_numpy():
    (xa, ya), (xb, yb), (xc, yc) = _batch(seed=3), _batch(seed=4), _batch(seed=5)
    xbm = XBM(ContrastiveLoss(0.2), memory_size=8, feat_dim=D, memory_weight=0.5)
    _run(xbm, xa, ya)
    _, loss_b = _run(xbm, xb, yb)
    ref_b = _contrastive_ref(xb, yb, 0.2) + 0.5 * _contrastive_ref(xb, yb, 0.2, xa, ya)
    assert abs(float(loss_b) - ref_b) / ref_b < 1e-5
    # Memory now holds the last 8 of a + b (a's first 4 rows dropped).
    _, loss_c = _run(xbm, xc, yc)
    mem_x, mem_y = np.concatenate([xa, xb])[-8:], np.concatenate([ya, yb])[-8:]
    ref_c = _contrastive_ref(xc, yc, 0.2) + 0.5 * _contrastive_ref(xc, yc, 0.2, mem_x, mem_y)
    assert abs(float(loss_c) - ref_c) / ref_c < 1e-5
    assert abs(ref_c - _contrastive_ref(xc, yc, 0.2)) > 1e-2  # the memory term matters


def test_memory_is_detached():
    (xa, ya), (xb, yb) = _batch(seed=6), _batch(seed=7)
    xbm = XBM(ContrastiveLoss(0.0), memory_size=32, feat_dim=D)
    xa_t, _ = _run(xbm, xa, ya, grad=True)
    assert xbm.memory()[0].stop_gradient
    xb_t, loss = _run(xbm, xb, yb, grad=True)
    loss.backward()
    assert xa_t.grad is None  # nothing flows back into the batch stored in memory
    grad = xb_t.grad.numpy()
    assert np.isfinite(grad).all() and (np.abs(grad).sum(1) > 0).all()
    # ... and the gradient is that of the loss with the memory as a constant.
    xb_ref = paddle.to_tensor(xb, stop_gradient=False)
    loss_fn = ContrastiveLoss(0.0)
    (
        loss_fn(xb_ref, paddle.to_tensor(yb))
        + loss_fn(xb_ref, paddle.to_tensor(yb), paddle.to_tensor(xa), paddle.to_tensor(ya))
    ).backward()
    np.testing.assert_allclose(grad, xb_ref.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_start_iteration_and_eval_mode_leave_the_memory_alone():
    x, y = _batch(seed=8)
    plain = float(ContrastiveLoss()(paddle.to_tensor(x), paddle.to_tensor(y)))
    xbm = XBM(ContrastiveLoss(), memory_size=16, feat_dim=D, start_iteration=2)
    for _ in range(2):  # warm-up steps 0 and 1: in-batch loss only, nothing stored
        assert float(_run(xbm, x, y)[1]) == plain and xbm.filled == 0
    xbm.eval()
    assert float(_run(xbm, x, y)[1]) == plain and xbm.filled == 0 and xbm.iteration == 2
    xbm.train()
    assert float(_run(xbm, x, y)[1]) == plain and xbm.filled == 6  # step 2: stores, memory was empty
    assert float(_run(xbm, x, y)[1]) > plain + 1e-3  # step 3: the memory term kicks in


def test_memory_is_not_checkpointed():
    assert not any("memory" in key for key in XBM(ContrastiveLoss(), 8, D).state_dict())


def test_wraps_a_loss_config():
    xbm = XBM({"_target_": "recog.losses.ContrastiveLoss", "margin": 0.3}, memory_size=8, feat_dim=D)
    assert isinstance(xbm.loss, ContrastiveLoss) and xbm.loss.margin == 0.3


def test_rejects_losses_without_references():
    with pytest.raises(ConfigError, match="ref_inputs"):
        XBM(PairwiseCosface(), memory_size=8, feat_dim=D)


def test_feat_dim_must_match():
    xbm = XBM(ContrastiveLoss(), memory_size=8, feat_dim=D + 1)
    with pytest.raises(ConfigError, match="feat_dim"):
        _run(xbm, *_batch())
