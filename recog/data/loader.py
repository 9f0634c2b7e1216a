"""Paddle DataLoaders for training (P x K batches) and evaluation (sequential)."""

from __future__ import annotations

from typing import Sequence

import paddle

from recog.data.dataset import ImageDataset
from recog.data.sampler import PKBatchSampler
from recog.data.splits import Sample
from recog.data.transforms import Transform


def build_train_loader(samples: Sequence[Sample], labels: Sequence[int], transform: Transform,
                       batch_size: int, samples_per_class: int, num_workers: int,
                       seed: int) -> paddle.io.DataLoader:
    """P x K batches ``[images [B, 3, S, S] float32, labels [B] int64]`` with ``labels``
    (usually contiguous training labels, aligned with ``samples``).

    Call ``set_loader_epoch(loader, epoch)`` before each epoch.
    """
    dataset = ImageDataset(samples, transform, labels=labels, seed=seed)
    sampler = PKBatchSampler(labels, batch_size, samples_per_class, seed=seed)
    return paddle.io.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                persistent_workers=num_workers > 0)


def build_eval_loader(samples: Sequence[Sample], transform: Transform, batch_size: int,
                      num_workers: int) -> paddle.io.DataLoader:
    """Batches ``[images [B, 3, S, S] float32, labels [B] int64]`` (original labels) in
    ``samples`` order; the last batch may be smaller."""
    return paddle.io.DataLoader(ImageDataset(samples, transform), batch_size=batch_size,
                                shuffle=False, drop_last=False, num_workers=num_workers,
                                persistent_workers=num_workers > 0)


def set_loader_epoch(loader: paddle.io.DataLoader, epoch: int) -> None:
    """Reshuffle the batch sampler and reseed augmentation for ``epoch``."""
    for part in (loader.batch_sampler, loader.dataset):
        if hasattr(part, "set_epoch"):
            part.set_epoch(epoch)
