import numpy as np
import paddle
import pytest

import recog  # noqa: F401
from recog.losses import ContrastiveLoss


def _batch(n=12, classes=4, d=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), rng.integers(0, classes, size=n).astype(np.int64)


def contrastive_ref(x, labels, margin, refs=None, ref_labels=None):
    """float64: 1/N sum_i [sum_{p} (1 - s_ip) + sum_{n} max(s_in - margin, 0)], pair by pair;
    without refs the batch is its own reference and (i, i) is skipped."""
    x = x.astype(np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    in_batch = refs is None
    refs, ref_labels = (x, labels) if in_batch else (refs.astype(np.float64), ref_labels)
    refs = refs / np.linalg.norm(refs, axis=1, keepdims=True)
    total = 0.0
    for i in range(len(x)):
        for j in range(len(refs)):
            if in_batch and i == j:
                continue
            s = float(x[i] @ refs[j])
            total += (1.0 - s) if labels[i] == ref_labels[j] else max(s - margin, 0.0)
    return total / len(x)


@pytest.mark.parametrize("margin", [0.5, 0.2])
@pytest.mark.parametrize("label_shape", ["N", "N1"])
def test_in_batch_matches_numpy(margin, label_shape):
    x, y = _batch()
    lab = y if label_shape == "N" else y[:, None]
    loss = ContrastiveLoss(margin)(paddle.to_tensor(x), paddle.to_tensor(lab))
    assert loss.shape == []
    ref = contrastive_ref(x, y, margin)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert ((xn @ xn.T)[y[:, None] != y[None, :]] > margin).any()  # the hinge is active
    assert abs(float(loss) - ref) / ref < 1e-5


def test_with_references_matches_numpy():
    x, y = _batch(seed=1)
    refs, ref_y = _batch(n=20, seed=2)
    loss = ContrastiveLoss(0.5)(
        paddle.to_tensor(x), paddle.to_tensor(y), paddle.to_tensor(refs), paddle.to_tensor(ref_y[:, None])
    )
    ref = contrastive_ref(x, y, 0.5, refs, ref_y)
    assert abs(float(loss) - ref) / ref < 1e-5


def test_hand_checked_case():
    # s01 = .6, s02 = .8, s12 = .96; margin .5. Anchor 0: (1 - .6) + (.8 - .5) = .7;
    # anchor 1: (1 - .6) + (.96 - .5) = .86; anchor 2: (.8 - .5) + (.96 - .5) = .76 -> 2.32 / 3.
    x = paddle.to_tensor([[2.0, 0.0], [0.6, 0.8], [0.8, 0.6]])
    loss = ContrastiveLoss(0.5)(x, paddle.to_tensor([0, 0, 1]))
    assert abs(float(loss) - 2.32 / 3) < 1e-6


def test_gradients_flow_to_inputs_and_references():
    x, y = _batch(seed=4)
    refs, ref_y = _batch(n=8, seed=5)
    xt = paddle.to_tensor(x, stop_gradient=False)
    rt = paddle.to_tensor(refs, stop_gradient=False)
    ContrastiveLoss(0.0)(xt, paddle.to_tensor(y), rt, paddle.to_tensor(ref_y)).backward()
    for grad in (xt.grad.numpy(), rt.grad.numpy()):
        assert np.isfinite(grad).all() and (np.abs(grad).sum(1) > 0).all()


def test_references_need_labels():
    x, y = _batch()
    with pytest.raises(ValueError, match="both ref_inputs and ref_labels"):
        ContrastiveLoss()(paddle.to_tensor(x), paddle.to_tensor(y), paddle.to_tensor(x))
