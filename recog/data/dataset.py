"""A Paddle map-style dataset over ``Sample`` lists."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import paddle

from recog.data.bad_images import record_bad_image
from recog.data.splits import Sample
from recog.data.transforms import DEFAULT_MAX_IMAGE_PIXELS, Transform, decode_image
from recog.errors import BadImageError, ConfigError, DataError

ON_BAD_IMAGE = ("skip", "fail")


class ImageDataset(paddle.io.Dataset):
    """``dataset[i] -> (image [3, S, S] float32, label int64)``.

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

    Bad images (missing, empty, truncated, not an image, over ``max_image_pixels``; see
    ``decode_image``). An exception in a DataLoader worker reaches the user as a wall of Paddle
    tracebacks, so ``__getitem__`` never raises for one: it returns zeros with the marker label
    ``-1 - i``, and the main process calls ``check_batch`` on each batch's labels. With
    ``on_bad_image="skip"`` a bad image is warned about (naming it) and appended to the
    ``bad_image_record`` file (``recog.data.bad_images``), and

    * in training (``dataset[(i, epoch, draw)]``) it is replaced by another image of the same
      class, chosen by a generator seeded by ``(seed, epoch, draw)``: batches keep their P x K
      shape and the run stays reproducible. Only a class without any readable image is marked;
    * in evaluation (``dataset[i]``) it is marked, and ``check_batch`` returns the mask of the
      samples to keep.

    With ``on_bad_image="fail"`` the image is marked and ``check_batch`` raises ``DataError``.
    A process tries a bad image once: it stays bad for the rest of the run.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Transform,
        labels: Sequence[int] | None = None,
        seed: int = 0,
        on_bad_image: str = "skip",
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        bad_image_record: str | None = None,
    ):
        super().__init__()
        if labels is not None and len(labels) != len(samples):
            raise ValueError(f"{len(labels)} labels for {len(samples)} samples")
        on_bad_image = getattr(on_bad_image, "value", on_bad_image)  # the config's enum or a string
        if on_bad_image not in ON_BAD_IMAGE:
            raise ConfigError(f"data.on_bad_image must be one of {', '.join(ON_BAD_IMAGE)}, got {on_bad_image!r}")
        if max_image_pixels is not None and max_image_pixels < 1:
            raise ConfigError(f"data.max_image_pixels must be positive or null (no limit), got {max_image_pixels}")
        self.samples = list(samples)
        self.labels = [s.label for s in self.samples] if labels is None else list(labels)
        self.transform = transform
        self.seed = seed
        self.on_bad_image = on_bad_image
        self.max_image_pixels = max_image_pixels
        self.bad_image_record = None if bad_image_record is None else os.fspath(bad_image_record)
        self.epoch = 0
        self._rng: np.random.Generator | None = None
        self._rng_key: tuple[int, int, int] | None = None
        self._bad: dict[int, str] = {}  # index -> reason, of the images this process found bad
        self._members: dict[int, np.ndarray] | None = None  # label -> sample indices, built on first use

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
            image = self._load_or_replace(index, epoch, draw)
        else:
            image = self._load(index, "left out of the evaluation")
        if image is None:
            size = self.transform.image_size
            return np.zeros((3, size, size), np.float32), np.int64(-1 - index)
        rng = None
        if self.transform.is_random:  # the trailing 1 keeps these keys apart from the streams'
            rng = self._generator() if key is None else np.random.default_rng(key)
        return self.transform(image, rng), np.int64(self.labels[index])

    def _load(self, index: int, action: str) -> np.ndarray | None:
        """The decoded image, or None if it is bad (recorded in skip mode)."""
        if index in self._bad:
            return None
        path = self.samples[index].path
        try:
            return decode_image(path, self.max_image_pixels)
        except BadImageError as error:
            self._bad[index] = error.reason
            if self.on_bad_image == "skip":
                record_bad_image(self.bad_image_record, path, error.reason, action)
            return None

    def _load_or_replace(self, index: int, epoch: int, draw: int) -> np.ndarray | None:
        """Sample ``index``'s image or, in skip mode, the first readable image of its class in an
        order drawn from ``(seed, epoch, draw)``; None if there is none (or in fail mode)."""
        image = self._load(index, "replaced by other images of its class in training batches")
        if image is not None or self.on_bad_image == "fail":
            return image
        if self._members is None:
            labels = np.asarray(self.labels)
            self._members = {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}
        same = self._members[int(self.labels[index])]
        for other in np.random.default_rng([self.seed, epoch, draw, 2]).permutation(same[same != index]):
            image = self._load(int(other), "replaced by other images of its class in training batches")
            if image is not None:
                return image
        return None

    def check_batch(self, labels: np.ndarray, training: bool = False) -> np.ndarray:
        """``keep: [B] bool``, False for the samples of a batch whose image was bad.

        ``labels: [B] int64`` as the loader returns them (a bad sample has label ``-1 - index``).
        Raises ``DataError`` naming the images and why they are bad if ``on_bad_image`` is
        "fail", or if ``training``: a training batch cannot lose samples, so a marker there means
        a class has no readable image left. Call it in the main process: the reasons are found
        again there (the workers' notes stay in the workers).
        """
        labels = np.asarray(labels).reshape(-1)
        keep = labels >= 0
        if keep.all() or (self.on_bad_image == "skip" and not training):
            return keep
        raise self._error(labels[~keep], class_lost=training and self.on_bad_image == "skip")

    def _error(self, markers: np.ndarray, class_lost: bool) -> DataError:
        bad = sorted({int(-1 - label) for label in markers})
        shown = "; ".join(f"{self.samples[i].path} ({self._reason(i)})" for i in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        if class_lost:
            return DataError(
                f"every training image of the class of {shown}{more} is bad, so none can take "
                "its place in a P x K batch: fix the images or remove the class from the list"
            )
        hint = ", or set data.on_bad_image=skip to skip bad images" if self.on_bad_image == "fail" else ""
        return DataError(f"bad image(s): {shown}{more}; fix or remove them from the list{hint}")

    def _reason(self, index: int) -> str:
        if index in self._bad:
            return self._bad[index]
        try:
            decode_image(self.samples[index].path, self.max_image_pixels)
        except BadImageError as error:
            return error.reason
        return "could not be read by a loader worker"  # readable now: a transient failure
