"""P x K batch sampling for metric learning."""

from __future__ import annotations

from typing import Iterator, Sequence

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
    """

    def __init__(self, labels: Sequence[int], batch_size: int, samples_per_class: int,
                 seed: int = 0, drop_last: bool = True):
        if samples_per_class < 1 or batch_size < 1:
            raise ConfigError(f"data.batch_size ({batch_size}) and data.samples_per_class "
                              f"({samples_per_class}) must be positive")
        if batch_size % samples_per_class:
            raise ConfigError(f"data.batch_size {batch_size} is not divisible by "
                              f"data.samples_per_class {samples_per_class}: each batch holds "
                              "whole groups of samples_per_class images of one class")
        if len(labels) == 0:
            raise DataError("the training set is empty")
        labels = np.asarray(labels)
        classes, inverse = np.unique(labels, return_inverse=True)
        self.num_classes_per_batch = batch_size // samples_per_class
        if self.num_classes_per_batch > len(classes):
            raise ConfigError(
                f"batch_size {batch_size} with samples_per_class {samples_per_class} needs "
                f"{self.num_classes_per_batch} classes per batch but the training set has "
                f"{len(classes)}: lower data.batch_size or raise data.samples_per_class")
        self.indices_per_class = [np.flatnonzero(inverse == c) for c in range(len(classes))]
        self.batch_size = batch_size
        self.samples_per_class = samples_per_class
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        rounding = len(labels) // batch_size if drop_last else -(-len(labels) // batch_size)
        self.num_batches = max(1, rounding)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        k = self.samples_per_class
        for _ in range(self.num_batches):
            batch = []
            for c in rng.choice(len(self.indices_per_class), self.num_classes_per_batch,
                                replace=False):
                pool = self.indices_per_class[c]
                batch.extend(rng.choice(pool, k, replace=len(pool) < k).tolist())
            yield batch
