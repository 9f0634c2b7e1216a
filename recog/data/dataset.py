"""A Paddle map-style dataset over ``Sample`` lists."""

from __future__ import annotations

from typing import Sequence

import numpy as np

import recog  # noqa: F401  (configures the runtime before Paddle is imported)
import paddle

from recog.data.splits import Sample
from recog.data.transforms import Transform, decode_image


class ImageDataset(paddle.io.Dataset):
    """``dataset[i] -> (image [3, S, S] float32, label int64)``.

    ``labels`` (aligned with ``samples``) replaces ``Sample.label``, e.g. with contiguous
    training labels; by default the original labels are returned.

    Augmentation randomness comes from a generator seeded with ``(seed, epoch, worker)``,
    where ``worker`` is 0 in the main process and ``id + 1`` in a DataLoader worker. It is
    created on first use in each process, so workers never share a random stream, and the
    run is reproducible for a given seed and ``num_workers``. ``set_epoch`` starts a new
    stream; persistent workers keep the epoch they were started with and simply continue
    their stream, which also gives new augmentations every epoch.
    """

    def __init__(self, samples: Sequence[Sample], transform: Transform,
                 labels: Sequence[int] | None = None, seed: int = 0):
        super().__init__()
        if labels is not None and len(labels) != len(samples):
            raise ValueError(f"{len(labels)} labels for {len(samples)} samples")
        self.samples = list(samples)
        self.labels = [s.label for s in self.samples] if labels is None else list(labels)
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self._rng: np.random.Generator | None = None
        self._rng_key: tuple[int, int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _generator(self) -> np.random.Generator:
        info = paddle.io.get_worker_info()
        key = (self.seed, self.epoch, 0 if info is None else info.id + 1)
        if self._rng_key != key:
            self._rng, self._rng_key = np.random.default_rng(key), key
        return self._rng

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.int64]:
        image = decode_image(self.samples[index].path)
        rng = self._generator() if self.transform.is_random else None
        return self.transform(image, rng), np.int64(self.labels[index])
