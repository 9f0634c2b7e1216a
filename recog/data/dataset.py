"""A Paddle map-style dataset over ``Sample`` lists."""

from __future__ import annotations

from typing import Sequence

import numpy as np

import paddle

from recog.data.splits import Sample
from recog.data.transforms import Transform, decode_image
from recog.errors import DataError


class ImageDataset(paddle.io.Dataset):
    """``dataset[i] -> (image [3, S, S] float32, label int64)``; label ``-1 - i`` if image i fails to decode.

    ``labels`` (aligned with ``samples``) replaces ``Sample.label``, e.g. with contiguous
    training labels; by default the original labels are returned.

    ``dataset[(i, epoch, draw)]`` (what the training loader asks for) augments sample ``i`` with
    a generator seeded by ``(seed, epoch, draw)``, where ``draw`` numbers the sample's place in
    the epoch's stream of batches (see ``build_train_loader``): the augmentation is then a pure
    function of the seed and the place in the epoch, the same for any ``num_workers``, any
    number of data-parallel ranks, and after resuming mid-epoch. (The epoch travels with the
    index because persistent workers never see ``set_epoch``.)

    ``dataset[i]`` draws from a per-process stream seeded with ``(seed, epoch, worker)``,
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

    def __getitem__(self, index: int | tuple[int, int, int]) -> tuple[np.ndarray, np.int64]:
        key = None
        if isinstance(index, tuple):
            index, epoch, draw = index
            key = [self.seed, epoch, draw, 1]
        try:
            image = decode_image(self.samples[index].path)
        except DataError:
            # An exception in a DataLoader worker reaches the user as a wall of Paddle tracebacks;
            # instead mark the sample and let the main process report it (see raise_if_undecodable).
            size = self.transform.image_size
            return np.zeros((3, size, size), np.float32), np.int64(-1 - index)
        rng = None
        if self.transform.is_random:  # the trailing 1 keeps these keys apart from the streams'
            rng = self._generator() if key is None else np.random.default_rng(key)
        return self.transform(image, rng), np.int64(self.labels[index])

    def raise_if_undecodable(self, labels: np.ndarray) -> None:
        """Raise ``DataError`` naming the images of a batch that failed to decode.

        ``labels: [B] int64`` as returned by ``__getitem__``: a failed sample has label ``-1 - index``.
        """
        failed = (-1 - labels[labels < 0]).tolist()
        if failed:
            paths = ", ".join(self.samples[i].path for i in failed[:5])
            more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
            raise DataError(f"cannot decode image(s) {paths}{more}: missing, unreadable or not an image "
                            "format OpenCV reads; fix or remove them from the list")
