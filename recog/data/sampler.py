"""P x K batch sampling for metric learning, single-process or split across data-parallel ranks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from recog.errors import ConfigError, DataError


class PKBatchSampler:
    """Batches of P classes x K samples, usable as ``DataLoader(batch_sampler=...)``.

    ``P = batch_size // samples_per_class``. Each batch holds P distinct classes drawn at
    random, and K distinct samples of each (drawn with replacement for a class with fewer
    than K samples). Batches are ordered: K consecutive indices of one class, then the next
    class, i.e. ``labels[batch].reshape(P, K)`` has one class per row.

    An epoch has ``len(labels) // batch_size`` batches (at least 1; rounded up if not
    ``drop_last``), always full. The order is a deterministic function of ``(seed, epoch)``;
    call ``set_epoch`` before each epoch.

    Data parallel: with ``world_size`` W > 1 each step draws one global batch of ``W * P``
    distinct classes and rank ``rank`` takes the ``rank``-th run of P classes (K samples each),
    so the ranks see different classes at every step, and the concatenation of the W ranks'
    batches is exactly the batch a single process draws with ``batch_size = W * batch_size``
    (same seed). ``batch_size`` is per rank; an epoch has ``len(labels) // (W * batch_size)``
    steps on every rank.

    ``set_epoch(epoch, start=n)`` skips the epoch's first ``n`` batches (resuming mid-epoch): they
    are still drawn, so the rest of the epoch is the same as without the interruption.
    """

    def __init__(
        self,
        labels: Sequence[int],
        batch_size: int,
        samples_per_class: int,
        seed: int = 0,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ):
        if samples_per_class < 1 or batch_size < 1:
            raise ConfigError(
                f"data.batch_size ({batch_size}) and data.samples_per_class ({samples_per_class}) must be positive"
            )
        if batch_size % samples_per_class:
            raise ConfigError(
                f"data.batch_size {batch_size} is not divisible by "
                f"data.samples_per_class {samples_per_class}: each batch holds "
                "whole groups of samples_per_class images of one class"
            )
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size} processes")
        if len(labels) == 0:
            raise DataError("the training set is empty")
        labels = np.asarray(labels)
        classes, inverse = np.unique(labels, return_inverse=True)
        self.num_classes_per_batch = batch_size // samples_per_class
        needed = self.num_classes_per_batch * world_size
        if needed > len(classes):
            ranks = f" on each of {world_size} processes (different classes per process)" if world_size > 1 else ""
            raise ConfigError(
                f"batch_size {batch_size} with samples_per_class {samples_per_class}{ranks} needs "
                f"{needed} classes per {'step' if world_size > 1 else 'batch'} but the training set has "
                f"{len(classes)}: lower data.batch_size or raise data.samples_per_class"
            )
        self.indices_per_class = [np.flatnonzero(inverse == c) for c in range(len(classes))]
        self.batch_size = batch_size
        self.samples_per_class = samples_per_class
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0
        global_batch = batch_size * world_size
        rounding = len(labels) // global_batch if drop_last else -(-len(labels) // global_batch)
        self.num_batches = max(1, rounding)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if not 0 <= start <= self.num_batches:
            raise ValueError(f"cannot start epoch {epoch} at batch {start} of {self.num_batches}")
        self.epoch = epoch
        self.start = start

    def __len__(self) -> int:
        """Batches of a whole epoch (also when ``set_epoch(..., start)`` skips some)."""
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        k, p = self.samples_per_class, self.num_classes_per_batch
        mine = range(self.rank * p, (self.rank + 1) * p)
        for step in range(self.num_batches):
            batch = []
            # Every rank draws the whole global batch, so the random streams stay in step.
            for slot, c in enumerate(rng.choice(len(self.indices_per_class), p * self.world_size, replace=False)):
                pool = self.indices_per_class[c]
                chosen = rng.choice(pool, k, replace=len(pool) < k)
                if slot in mine:
                    batch.extend(chosen.tolist())
            if step >= self.start:
                yield batch
