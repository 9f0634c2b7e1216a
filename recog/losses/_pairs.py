"""Helpers shared by the pair-based losses: label checks, same-class masks, distances.

The label checks (``check_pk_batch``, ``check_class_num``, and CenterLoss's / NpairsLoss's own)
read device tensors back to the host: a synchronisation. They run by default, so a loss called
on a bad batch says why; the train loop, whose sampler guarantees every batch's P x K structure,
runs them on its first step only and turns them off for the rest (``label_checks(False)``).
"""

import contextlib
import contextvars
from collections.abc import Iterator

import paddle

from recog.errors import ConfigError

_LABEL_CHECKS = contextvars.ContextVar("recog_label_checks", default=True)


def label_checks_enabled() -> bool:
    """Whether the losses check their labels (the default; see ``label_checks``)."""
    return _LABEL_CHECKS.get()


@contextlib.contextmanager
def label_checks(enabled: bool) -> Iterator[None]:
    """Within the block the losses' label checks are on or off. Turn them off only where the
    batches are known to be valid (the P x K sampler's, after a first checked step)."""
    token = _LABEL_CHECKS.set(bool(enabled))
    try:
        yield
    finally:
        _LABEL_CHECKS.reset(token)


def flat_labels(labels: paddle.Tensor, n: int, name: str) -> paddle.Tensor:
    """``labels`` [N] or [N, 1] -> [N] int64; ValueError unless there is one label per feature row."""
    labels = labels.reshape([-1]).astype("int64")
    if labels.shape[0] != n:
        raise ValueError(f"{name} got {n} feature rows but {labels.shape[0]} labels")
    return labels


def same_class(labels: paddle.Tensor, ref_labels: paddle.Tensor | None = None) -> paddle.Tensor:
    """[N, M] bool: ``labels[i] == ref_labels[j]`` (``ref_labels`` defaults to ``labels``)."""
    ref_labels = labels if ref_labels is None else ref_labels
    return labels.unsqueeze(1) == ref_labels.unsqueeze(0)


def in_batch_masks(labels: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor]:
    """``(is_pos, is_neg)`` [N, N] bool: same class but not the sample itself; other class."""
    same = same_class(labels)
    return same & ~paddle.eye(labels.shape[0]).astype("bool"), ~same


def pair_masks(
    inputs: paddle.Tensor, labels: paddle.Tensor, name: str
) -> tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
    """``(labels [N], is_pos [N, N], is_neg [N, N])`` for ``inputs [N, ...]`` and labels [N] or [N, 1]."""
    labels = flat_labels(labels, inputs.shape[0], name)
    return (labels, *in_batch_masks(labels))


def check_pk_batch(is_pos: paddle.Tensor, is_neg: paddle.Tensor, labels: paddle.Tensor, name: str) -> None:
    """Raise ConfigError unless every anchor has a positive and a negative ([N, N] bool masks).
    A device read-back: skipped while ``label_checks(False)``."""
    if not label_checks_enabled():
        return
    no_pos = int((~is_pos.any(axis=1)).astype("int64").sum())
    no_neg = int((~is_neg.any(axis=1)).astype("int64").sum())
    if no_pos or no_neg:
        n_classes = len(set(labels.numpy().tolist()))
        raise ConfigError(
            f"{name} needs P x K batches (several images per class, several classes per batch): "
            f"this batch has {labels.shape[0]} samples in {n_classes} class(es), {no_pos} anchor(s) "
            f"without a positive and {no_neg} without a negative. Use the P x K sampler (set "
            "data.samples_per_class, e.g. 4)."
        )


def check_class_num(name: str, labels: paddle.Tensor, class_num: int | None) -> None:
    """ValueError if a label is outside ``[0, class_num)`` (no check when ``class_num`` is None).
    A device read-back: skipped while ``label_checks(False)``."""
    if class_num is None or labels.shape[0] == 0 or not label_checks_enabled():
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= class_num:
        raise ValueError(f"{name}: labels must be in [0, class_num={class_num}), got [{low}, {high}]")


def l2_normalize(x: paddle.Tensor, eps: float = 1e-12) -> paddle.Tensor:
    """``x / max(|x|_2, eps)`` row-wise."""
    return x / paddle.clip(paddle.norm(x, p=2, axis=-1, keepdim=True), min=eps)


def squared_distances(x: paddle.Tensor) -> paddle.Tensor:
    """``[N, D] -> [N, N]`` squared Euclidean distances, ``|x_i|^2 + |x_j|^2 - 2 x_i.x_j`` clipped at 0."""
    sq_norm = (x * x).sum(axis=1, keepdim=True)
    return paddle.clip(sq_norm + sq_norm.t() - 2.0 * paddle.matmul(x, x, transpose_y=True), min=0.0)


def hardest_pairs(
    dist: paddle.Tensor, is_pos: paddle.Tensor, is_neg: paddle.Tensor
) -> tuple[paddle.Tensor, paddle.Tensor]:
    """Batch-hard mining on ``dist [N, N]``: per anchor the largest distance to a positive and the
    smallest to a negative, ``([N], [N])`` (Hermans et al. 2017)."""
    inf = paddle.full_like(dist, float("inf"))
    return paddle.where(is_pos, dist, -inf).max(axis=1), paddle.where(is_neg, dist, inf).min(axis=1)
