"""Loss terms on the data-parallel global batch, checked in one process: W simulated ranks each run
``WeightedLoss`` on their own rows, with ``global_batch.gather`` standing in for the all_gather,
and the mean of their gradients (what ``paddle.DataParallel`` applies) must equal the gradient of
one process on the concatenated batch. The real collectives are in test_data_parallel.py."""

import copy

import numpy as np
import paddle
import pytest

import recog  # noqa: F401
from recog.distributed import global_batch, parallel
from recog.losses import (
    XBM,
    CELoss,
    CenterLoss,
    ContrastiveLoss,
    DCHLoss,
    DSHSDLoss,
    EmlLoss,
    LCDSHLoss,
    MSMLoss,
    NpairsLoss,
    PairwiseCosface,
    SupConLoss,
    TriHardLoss,
    TripletLoss,
    TripletLossV2,
)
from recog.losses.triplet_angular import TripletAngularMarginLoss
from recog.losses.weighted import WeightedLoss, sees_global_batch

D_IN, D, CLASSES = 6, 8, 8

PAIR_LOSSES = {
    "triplet_v2": lambda: TripletLossV2(margin=0.5),
    "triplet_angular": lambda: TripletAngularMarginLoss(margin=0.5, add_absolute=True),
    "supcon": lambda: SupConLoss(temperature=0.5, base_temperature=0.5),
    "xbm": lambda: XBM(ContrastiveLoss(margin=0.1), memory_size=40, feat_dim=D),
    "triplet": lambda: TripletLoss(margin=2.0),
    "trihard": lambda: TriHardLoss(margin=0.5),
    "contrastive": lambda: ContrastiveLoss(margin=0.1),
    "msm": lambda: MSMLoss(margin=0.5),
    "npairs": lambda: NpairsLoss(reg_lambda=0.01),
    "eml": lambda: EmlLoss(beta=10.0),
    "pairwise_cosface": lambda: PairwiseCosface(margin=0.35, gamma=4.0),
    "dch": lambda: DCHLoss(gamma=2.0, class_num=CLASSES),
    "dshsd": lambda: DSHSDLoss(alpha=0.05),
    "lcdsh": lambda: LCDSHLoss(class_num=CLASSES),
}


class Net(paddle.nn.Layer):
    """A linear "model": features [N, D] and logits [N, CLASSES]."""

    def __init__(self):
        super().__init__()
        self.embed, self.head = paddle.nn.Linear(D_IN, D), paddle.nn.Linear(D, CLASSES)

    def forward(self, x):
        features = self.embed(x)
        return {"features": features, "logits": self.head(features)}


def _batch(seed: int, rows_per_rank=(8, 8), k: int = 2):
    """Images [N, D_IN] and labels [N] of a global P x K batch, and each rank's row slice: the ranks
    hold different classes, in rank order (as PKBatchSampler splits a global batch)."""
    rng = np.random.default_rng(seed)
    classes = rng.permutation(CLASSES)[: sum(rows_per_rank) // k]
    labels = np.repeat(classes, k).astype(np.int64)
    stops = np.cumsum(rows_per_rank)
    slices = [slice(stop - n, stop) for stop, n in zip(stops, rows_per_rank)]
    return rng.normal(size=(len(labels), D_IN)).astype(np.float32), labels, slices


def _grads(*layers) -> list[np.ndarray]:
    """Every parameter's gradient (zeros for those no term reads, e.g. the head under a pair loss)."""
    return [
        np.zeros(p.shape, np.float32) if p.grad is None else p.grad.numpy().copy()
        for layer in layers
        for p in layer.parameters()
    ]


def _single_step(net, loss, images, labels):
    values = loss(net(paddle.to_tensor(images)), paddle.to_tensor(labels))
    values["loss"].backward()
    grads = _grads(net, loss)
    net.clear_gradients(), loss.clear_gradients()
    return {k: float(v) for k, v in values.items()}, grads


def _rank_steps(nets, losses, images, labels, slices, distributed=True):
    """One step on every simulated rank: ``(each rank's values, the ranks' mean gradient)``."""
    rows = [nets[r](paddle.to_tensor(images[s]))["features"].detach() for r, s in enumerate(slices)]
    all_values, all_grads = [], []
    for here, (net, loss, rank_slice) in enumerate(zip(nets, losses, slices)):

        def gather(inputs, rank_labels, here=here):
            assert np.array_equal(rank_labels.numpy(), labels[slices[here]])
            parts = list(rows)
            parts[here] = inputs
            return global_batch.with_local_gradient(parts, here), paddle.to_tensor(labels)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(parallel, "is_distributed", lambda: distributed)
            patch.setattr(global_batch, "gather", gather)
            values = loss(net(paddle.to_tensor(images[rank_slice])), paddle.to_tensor(labels[rank_slice]))
        values["loss"].backward()
        all_values.append({k: float(v) for k, v in values.items()})
        all_grads.append(_grads(net, loss))
        net.clear_gradients(), loss.clear_gradients()
    return all_values, [np.mean(g, axis=0) for g in zip(*all_grads)]


def _replicas(world, net, loss):
    return [copy.deepcopy(net) for _ in range(world)], [copy.deepcopy(loss) for _ in range(world)]


def _max_relative(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Largest difference relative to the largest gradient (some are 0 in exact arithmetic: a bias
    under a loss of distances, which a translation does not change)."""
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b)) / max(float(np.abs(y).max()) for y in b)


@pytest.mark.parametrize("name", sorted(PAIR_LOSSES))
def test_ranks_on_the_global_batch_train_what_one_process_trains(name):
    paddle.seed(0)
    net, loss = Net(), WeightedLoss({name: (1.0, "features", PAIR_LOSSES[name]())})
    assert sees_global_batch(loss.terms[name])
    nets, losses = _replicas(2, net, loss)
    for step in range(3):  # XBM: the memory fills, and every rank's memory is the single process's
        images, labels, slices = _batch(seed=step)
        single_values, single_grads = _single_step(net, loss, images, labels)
        values, grads = _rank_steps(nets, losses, images, labels, slices)
        assert _max_relative(grads, single_grads) < 1e-5, step
        for rank_values in values:  # each rank's value is the single process's (what the tracker shows)
            assert rank_values == pytest.approx(single_values, rel=1e-5, abs=1e-6)
    assert single_values[name] > 1e-3  # not a vanishing loss (whose gradient would be trivially equal)
    if name == "xbm":
        for replica in losses:
            for mine, single in zip(replica.terms[name].memory(), loss.terms[name].memory()):
                np.testing.assert_allclose(mine.numpy(), single.numpy(), rtol=1e-5, atol=1e-6)
        assert loss.terms[name].filled == 40  # 3 batches of 16 in a memory of 40: wrapped

    # The control: each rank mining its own rows trains another objective.
    images, labels, slices = _batch(seed=7)
    _, single_grads = _single_step(net, loss, images, labels)
    _, local_grads = _rank_steps(*_replicas(2, net, loss), images, labels, slices, distributed=False)
    assert _max_relative(local_grads, single_grads) > 1e-3


def test_unequal_rank_batches_and_three_ranks():
    paddle.seed(1)
    net, loss = Net(), WeightedLoss({"supcon": (1.0, "features", SupConLoss(temperature=0.5))})
    images, labels, slices = _batch(seed=3, rows_per_rank=(2, 6, 8))
    _, single_grads = _single_step(net, loss, images, labels)
    _, grads = _rank_steps(*_replicas(3, net, loss), images, labels, slices)
    assert _max_relative(grads, single_grads) < 1e-5


class GlobalCenterLoss(CenterLoss):
    per_sample = False  # computed on the global batch although it need not be: its centres' gradient


def test_a_recipe_mixing_per_sample_and_global_terms():
    """CE on logits and center loss stay on each rank's rows, triplet and XBM see the global batch, all
    reading the same features; and a loss with parameters on the global batch gets them right."""
    paddle.seed(2)
    net = Net()
    loss = WeightedLoss(
        {
            "ce": (1.0, "logits", CELoss(epsilon=0.1)),
            "center": (0.1, "features", CenterLoss(CLASSES, D)),
            "global_center": (0.1, "features", GlobalCenterLoss(CLASSES, D)),
            "triplet_v2": (1.0, "features", TripletLossV2(margin=0.5)),
            "xbm": (0.5, "features", XBM(ContrastiveLoss(margin=0.1), memory_size=64, feat_dim=D)),
        }
    )
    assert [sees_global_batch(term) for term in loss.terms.values()] == [False, False, True, True, True]
    nets, losses = _replicas(2, net, loss)
    for step in range(2):
        images, labels, slices = _batch(seed=10 + step)
        single_values, single_grads = _single_step(net, loss, images, labels)
        values, grads = _rank_steps(nets, losses, images, labels, slices)
        assert _max_relative(grads, single_grads) < 1e-5
        # what the tracker logs, the mean over the ranks, is the single process's value of every term
        logged = {k: np.mean([v[k] for v in values]) for k in single_values}
        assert logged == pytest.approx(single_values, rel=1e-5)
        assert values[0]["ce"] != pytest.approx(values[1]["ce"])  # CE: each rank its own rows


def test_with_local_gradient_keeps_values_and_sends_w_times_the_gradient_to_the_own_rows():
    parts = [paddle.to_tensor(np.arange(6, dtype=np.float32).reshape(3, 2) + 10 * r) for r in range(3)]
    for part in parts:
        part.stop_gradient = False
    joined = global_batch.with_local_gradient(parts, 1)
    np.testing.assert_array_equal(joined.numpy(), np.concatenate([p.numpy() for p in parts]))  # bit for bit
    weights = paddle.to_tensor(np.random.default_rng(0).normal(size=(9, 2)).astype(np.float32))
    (joined * weights).sum().backward()
    assert parts[0].grad is None and parts[2].grad is None  # the other ranks' rows: detached
    np.testing.assert_allclose(parts[1].grad.numpy(), 3 * weights.numpy()[3:6], rtol=1e-6)
    # one rank: the rows themselves
    alone = paddle.to_tensor([[1.0, 2.0]], stop_gradient=False)
    global_batch.with_local_gradient([alone], 0).sum().backward()
    np.testing.assert_array_equal(alone.grad.numpy(), [[1.0, 1.0]])


def test_in_one_process_the_global_batch_is_the_batch():
    inputs, labels = paddle.ones([4, 3]), paddle.arange(4)
    gathered_inputs, gathered_labels = global_batch.gather(inputs, labels)
    assert gathered_inputs is inputs and gathered_labels is labels
    assert global_batch.row_counts(4) == [4]
    (rows,) = global_batch.gather_tensor_rows(inputs, [4])
    np.testing.assert_array_equal(rows.numpy(), inputs.numpy())


def test_only_ce_and_center_loss_stay_on_each_ranks_rows():
    import recog.losses as losses

    classes = [getattr(losses, name) for name in losses.__all__] + [TripletAngularMarginLoss]
    local = {cls.__name__ for cls in classes if getattr(cls, "per_sample", False)}
    assert local == {"CELoss", "CenterLoss"}
    assert {cls.__name__ for cls in classes} - local == {
        type(make()).__name__ for make in PAIR_LOSSES.values()
    }  # every other loss is among those checked above
