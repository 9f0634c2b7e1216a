"""The data-parallel runtime: process group, cross-rank reductions, eval shards and gathers.

Every helper is a no-op (or the identity) in a single process, so the stages call them
unconditionally. Collectives must be reached by every rank in the same order: the stages call
them at points every rank passes (log steps, step boundaries, evaluation, checkpoints).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import paddle
import paddle.distributed as dist


def launched_world_size() -> int:
    """Processes started by ``paddle.distributed.launch`` (1 outside the launcher)."""
    return int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))


def init_distributed() -> tuple[int, int]:
    """``(rank, world_size)``; joins the process group (gloo on CPU, NCCL on GPU) when launched
    with more than one process. Call after ``select_device``. Idempotent."""
    if launched_world_size() > 1 and not dist.is_initialized():
        dist.init_parallel_env()
    return rank(), world_size()


def is_distributed() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def mean_across_ranks(values: dict[str, paddle.Tensor]) -> dict[str, float]:
    """Scalars (e.g. this step's loss terms) averaged over the ranks, as Python floats.

    One all_reduce for all of them; the stages call it only at the logging interval.
    """
    names = list(values)
    stacked = paddle.stack([values[n].detach().astype("float32").reshape([]) for n in names])
    if is_distributed():
        dist.all_reduce(stacked)
        stacked = stacked / world_size()
    return dict(zip(names, stacked.numpy().tolist()))


def max_across_ranks(flags: paddle.Tensor) -> np.ndarray:
    """``flags`` ([F] int32, e.g. 0/1 per condition) element-wise maxed over the ranks, read back
    to the host: one all_reduce (none in a single process) and one synchronisation.

    The train loop's one per-step sync: "non-finite loss or gradient" and "stop requested" ride
    in the same small tensor, so every rank skips, fails or stops after the same step.
    """
    if is_distributed():
        flags = flags.clone()
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return flags.numpy()


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is True on any rank (an all_reduce MAX)."""
    if not is_distributed():
        return bool(flag)
    value = paddle.to_tensor([int(bool(flag))], dtype="int32")
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    objects: list[Any] = []
    dist.all_gather_object(objects, obj)
    return objects


def shard_range(num_samples: int, batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)``: this rank's contiguous share of an eval set, in whole batches.

    The ``ceil(num_samples / batch_size)`` batches a single process would run are split into
    ``world_size`` contiguous runs (sizes differ by at most one batch; a rank may get none), so
    every sample is computed in exactly the batch it would be in a single process, and
    concatenating the shards in rank order gives back the original order.
    """
    batches = -(-num_samples // batch_size)
    first, last = rank * batches // world_size, (rank + 1) * batches // world_size
    return min(first * batch_size, num_samples), min(last * batch_size, num_samples)


def gather_rows(local: np.ndarray) -> np.ndarray:
    """Concatenate every rank's rows in rank order; the result is the same on every rank.

    ``local``: ``[n_r]`` or ``[n_r, D]`` with the same dtype on every rank (``n_r`` may differ,
    may be 0; an empty 2-D shard may have any width). ``all_gather`` needs equal shapes, so each
    rank pads to the longest shard, and the padding is cut off again using the gathered counts:
    no sample is lost or duplicated.
    """
    if not is_distributed():
        return local
    if local.ndim not in (1, 2):
        raise ValueError(f"gather_rows takes 1-D or 2-D arrays, got shape {local.shape}")
    count = local.shape[0]
    width = 1 if local.ndim == 1 else (local.shape[1] if count else 0)
    sizes: list[paddle.Tensor] = []
    dist.all_gather(sizes, paddle.to_tensor([count, width], dtype="int64"))
    counts = [int(s[0]) for s in sizes]
    width = max(int(s[1]) for s in sizes)
    longest = max(counts)
    if longest == 0:
        return local.reshape((0,) if local.ndim == 1 else (0, width))
    padded = np.zeros((longest, width), dtype=local.dtype)
    if count:
        padded[:count] = local.reshape(count, width)
    parts: list[paddle.Tensor] = []
    dist.all_gather(parts, paddle.to_tensor(padded))
    rows = np.concatenate([part.numpy()[:n] for part, n in zip(parts, counts)])
    return rows.reshape(-1) if local.ndim == 1 else rows
