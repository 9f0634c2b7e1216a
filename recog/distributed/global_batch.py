"""The global batch of a data-parallel step, for the loss terms that relate samples to each other.

Each rank holds its share of the step's batch (the P x K sampler gives rank 0 the first classes,
rank 1 the next, ...). A triplet, contrastive or memory term computed on that share alone would
mine among its classes only: N processes would train another objective than one process on the
concatenated batch. ``gather`` gives every rank the concatenated batch instead, its own rows
keeping their gradient (``with_local_gradient``); ``recog.losses.weighted.WeightedLoss`` calls it.
"""

import paddle
import paddle.distributed as dist

from recog.distributed import parallel


def row_counts(count: int) -> list[int]:
    """Every rank's row count ``[n_0, n_1, ...]`` (one small all_gather and a host read; ``[count]``
    in a single process)."""
    if not parallel.is_distributed():
        return [count]
    sizes: list[paddle.Tensor] = []
    dist.all_gather(sizes, paddle.to_tensor([count], dtype="int64"))
    return [int(size) for size in paddle.concat(sizes).numpy()]


def gather_tensor_rows(local: paddle.Tensor, counts: list[int]) -> list[paddle.Tensor]:
    """Every rank's rows (``[n_r, ...]`` each, rank order, detached, on the device) given
    ``counts = row_counts(n)``. ``all_gather`` needs equal shapes: each rank pads its rows with
    zeros to the longest, and the padding is cut off again."""
    if not parallel.is_distributed():
        return [local.detach()]
    longest, rows = max(counts), local.detach()
    if rows.shape[0] < longest:
        rows = paddle.concat([rows, paddle.zeros([longest - rows.shape[0], *rows.shape[1:]], dtype=rows.dtype)])
    parts: list[paddle.Tensor] = []
    dist.all_gather(parts, rows)
    return [part[:n] for part, n in zip(parts, counts)]


def with_local_gradient(parts: list[paddle.Tensor], rank: int) -> paddle.Tensor:
    """``concat(parts)`` (the ranks' rows in rank order) through which only ``parts[rank]`` passes
    gradient, multiplied by ``W = len(parts)``; the values are the rows unchanged.

    Why W: ``paddle.DataParallel`` averages the ranks' gradients. When every rank computes the same
    loss ``L`` on the concatenated rows, rank r's gradient is ``W * dL/dx_r * dx_r/dtheta`` and their
    mean is ``sum_r dL/dx_r * dx_r/dtheta``: the gradient one process computes on the concatenated
    batch. The factor sits on these rows only (``x + (W - 1) * (x - x.detach())``, exactly ``x`` in
    value), not on the loss: gradients reaching the loss's own parameters, or the same rows through
    other loss terms, are not scaled.
    """
    world, local = len(parts), parts[rank]
    if world > 1:
        local = local + (world - 1) * (local - local.detach())
    return paddle.concat([local if r == rank else part.detach() for r, part in enumerate(parts)])


def gather(inputs: paddle.Tensor, labels: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor]:
    """``(inputs, labels)`` of all ranks concatenated in rank order: the batch one process would
    train on (the P x K sampler gives each rank the next classes of the global batch). This rank's
    rows carry gradient (scaled, see ``with_local_gradient``), the others' are detached. The
    identity in a single process; in several, three all_gathers that every rank must reach in the
    same order. ``inputs`` [n, ...], ``labels`` [n] / [n, 1] / [n, C] on each rank (n may differ)."""
    if not parallel.is_distributed():
        return inputs, labels
    counts, here = row_counts(inputs.shape[0]), parallel.rank()
    rows, label_rows = gather_tensor_rows(inputs, counts), gather_tensor_rows(labels, counts)
    rows[here], label_rows[here] = inputs, labels
    return with_local_gradient(rows, here), paddle.concat(label_rows)
