"""Label masks and the P x K batch check shared by the pair-based losses."""

from typing import Tuple

import paddle

from recog.errors import ConfigError


def pair_masks(inputs: paddle.Tensor, labels: paddle.Tensor, name: str
               ) -> Tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
    """``(labels [N], is_pos [N, N], is_neg [N, N])`` for ``inputs [N, ...]`` and labels [N] or [N, 1].

    ``is_pos[i, j]``: same label and ``j != i``; ``is_neg[i, j]``: different labels.
    """
    n = inputs.shape[0]
    labels = labels.reshape([-1])
    if labels.shape[0] != n:
        raise ValueError(f"{name} got {n} features but {labels.shape[0]} labels")
    same = labels.unsqueeze(1) == labels.unsqueeze(0)
    return labels, same & ~paddle.eye(n).astype("bool"), ~same


def check_pk_batch(is_pos: paddle.Tensor, is_neg: paddle.Tensor, labels: paddle.Tensor, name: str) -> None:
    """Raise ConfigError unless every anchor has a positive and a negative."""
    no_pos = int((~is_pos.any(axis=1)).astype("int64").sum())
    no_neg = int((~is_neg.any(axis=1)).astype("int64").sum())
    if no_pos or no_neg:
        n_classes = len(set(labels.numpy().tolist()))
        raise ConfigError(
            f"{name} needs P x K batches (several images per class, several classes per batch): "
            f"this batch has {labels.shape[0]} samples in {n_classes} class(es), {no_pos} anchor(s) "
            f"without a positive and {no_neg} without a negative. "
            "Use the P x K sampler (set data.samples_per_class, e.g. 4)."
        )


def l2_normalize(x: paddle.Tensor, eps: float = 1e-12) -> paddle.Tensor:
    """``x / max(|x|_2, eps)`` row-wise."""
    return x / paddle.clip(paddle.norm(x, p=2, axis=-1, keepdim=True), min=eps)


def squared_distances(x: paddle.Tensor) -> paddle.Tensor:
    """``[N, D] -> [N, N]`` squared Euclidean distances, ``|x_i|^2 + |x_j|^2 - 2 x_i.x_j`` clipped at 0."""
    sq_norm = (x * x).sum(axis=1, keepdim=True)
    return paddle.clip(sq_norm + sq_norm.t() - 2.0 * paddle.matmul(x, x, transpose_y=True), min=0.0)
