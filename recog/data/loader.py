"""Paddle DataLoaders for training (P x K batches) and evaluation (sequential).

Both yield host (CPU) tensors whatever the device: the stages check a batch's labels on the host
(a copy, not a device read-back), then move what the model needs with ``to_device``; the eval
stage's predictor reads host arrays directly.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence

import paddle

from recog.data.bad_images import FILE_NAME as BAD_IMAGES_FILE
from recog.data.dataset import ImageDataset
from recog.data.sampler import PKBatchSampler
from recog.data.splits import Sample
from recog.data.transforms import Transform


class KeyedBatches:
    """A ``PKBatchSampler`` whose indices carry the epoch and their place in the epoch.

    Yields ``[(index, epoch, draw), ...]`` where ``draw = step * W * B + rank * B + j`` numbers
    the sample across the global batches of the epoch (W ranks, B per rank): ``ImageDataset``
    seeds the sample's augmentation with it, so augmentation does not depend on which process
    or worker loads the sample, nor on where a resumed epoch starts.
    """

    def __init__(self, sampler: PKBatchSampler):
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.sampler.set_epoch(epoch, start)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        s = self.sampler
        for step, batch in enumerate(s, start=s.start):
            first = step * s.batch_size * s.world_size + s.rank * s.batch_size
            yield [(index, s.epoch, first + j) for j, index in enumerate(batch)]


def dataset_options(data_cfg, run_dir=None) -> Dict[str, Any]:
    """``ImageDataset`` keyword arguments from the ``data`` config: bad-image handling
    (``data.on_bad_image``, ``data.max_image_pixels``), recorded in ``<run_dir>/bad_images.tsv``."""
    options: Dict[str, Any] = {}
    for key in ("on_bad_image", "max_image_pixels"):
        if key in data_cfg:
            options[key] = getattr(data_cfg[key], "value", data_cfg[key])
    if run_dir is not None:
        options["bad_image_record"] = os.path.join(os.fspath(run_dir), BAD_IMAGES_FILE)
    return options


def build_train_loader(samples: Sequence[Sample], labels: Sequence[int], transform: Transform,
                       batch_size: int, samples_per_class: int, num_workers: int,
                       seed: int, rank: int = 0, world_size: int = 1,
                       options: Optional[Mapping[str, Any]] = None) -> paddle.io.DataLoader:
    """P x K batches ``[images [B, 3, S, S] float32, labels [B] int64]`` with ``labels``
    (usually contiguous training labels, aligned with ``samples``).

    ``batch_size`` is per process; with ``world_size`` > 1 each rank gets its share of every
    global batch (see ``PKBatchSampler``). Call ``set_loader_epoch(loader, epoch)`` before each
    epoch. Host tensors; workers (``num_workers`` > 0) persist across epochs. ``options``: more
    ``ImageDataset`` arguments (``dataset_options``).
    """
    dataset = ImageDataset(samples, transform, labels=labels, seed=seed, **(options or {}))
    sampler = PKBatchSampler(labels, batch_size, samples_per_class, seed=seed, rank=rank, world_size=world_size)
    return paddle.io.DataLoader(dataset, batch_sampler=KeyedBatches(sampler), num_workers=num_workers,
                                persistent_workers=num_workers > 0, places=paddle.CPUPlace())


def build_eval_loader(samples: Sequence[Sample], transform: Transform, batch_size: int,
                      num_workers: int, options: Optional[Mapping[str, Any]] = None) -> paddle.io.DataLoader:
    """Batches ``[images [B, 3, S, S] float32, labels [B] int64]`` (original labels) in
    ``samples`` order; the last batch may be smaller. Host tensors. ``options``: as for
    ``build_train_loader``."""
    return paddle.io.DataLoader(ImageDataset(samples, transform, **(options or {})), batch_size=batch_size,
                                shuffle=False, drop_last=False, num_workers=num_workers,
                                persistent_workers=num_workers > 0, places=paddle.CPUPlace())


def to_device(tensor: paddle.Tensor) -> paddle.Tensor:
    """A loader's host tensor on the current Paddle device (the tensor itself on the CPU)."""
    device = paddle.get_device()
    return tensor if device == "cpu" else tensor.to(device, blocking=False)


def set_loader_epoch(loader: paddle.io.DataLoader, epoch: int, start: int = 0) -> None:
    """Reshuffle the batch sampler and reseed augmentation for ``epoch``; ``start`` skips the
    epoch's first batches (resuming mid-epoch)."""
    if hasattr(loader.batch_sampler, "set_epoch"):
        if start:
            loader.batch_sampler.set_epoch(epoch, start)
        else:
            loader.batch_sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
