"""Paddle DataLoaders for training (P x K batches) and evaluation (sequential).

Both yield host (CPU) tensors whatever the device: the stages check a batch's labels on the host
(a copy, not a device read-back), then move what the model needs with ``to_device``; the eval
stage's predictor reads host arrays directly.

Both are ``GuardedDataLoader``s, which make two of Paddle's loader failure modes safe:

* an exception in the loader's thread (``num_workers=0``: the batch sampler and the dataset run
  there) leaves Paddle's main thread waiting for a batch forever; one in a worker process reaches
  the user as "Blocking queue is killed". The guard records the thread's exception, wakes the
  main thread, and raises ``DataError`` naming the original exception and where it was raised;
* persistent workers break when an epoch is left mid-way (``IndexError: pop from empty list``
  at the next epoch): an iteration that did not reach the end shuts its workers down, and the
  next epoch starts fresh ones. The training loader's epochs are cut to
  ``trainer.steps_per_epoch`` by the batch sampler itself (``KeyedBatches(steps=)``), so a short
  epoch still ends normally and keeps its workers.

Workers die with the process that started them (``_DieWithParent``: a thread in each worker
removes the shared-memory files the worker still holds and exits it within half a second of its
parent ending), so a trainer killed with SIGKILL leaves no workers behind; and
``data.num_workers`` is at most ``max_workers()`` (four per usable core, at least 8): each worker
is a copy of the process.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import paddle

from recog.data.bad_images import FILE_NAME as BAD_IMAGES_FILE
from recog.data.dataset import ImageDataset
from recog.data.sampler import PKBatchSampler
from recog.data.splits import Sample
from recog.data.transforms import Transform
from recog.errors import ConfigError, DataError

log = logging.getLogger(__name__)


class KeyedBatches:
    """A ``PKBatchSampler`` whose indices carry the epoch and their place in the epoch, cut to
    ``steps`` batches per epoch (None: the whole epoch).

    Yields ``[(index, epoch, draw), ...]`` where ``draw = step * W * B + rank * B + j`` numbers
    the sample across the global batches of the epoch (W ranks, B per rank): ``ImageDataset``
    seeds the sample's augmentation with it, so augmentation does not depend on which process
    or worker loads the sample, nor on where a resumed epoch starts.
    """

    def __init__(self, sampler: PKBatchSampler, steps: int | None = None):
        self.sampler = sampler
        self.steps = steps

    def __len__(self) -> int:
        return len(self.sampler) if self.steps is None else min(len(self.sampler), self.steps)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.sampler.set_epoch(epoch, start)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        s = self.sampler
        for step, batch in enumerate(s, start=s.start):
            if step >= len(self):
                return
            first = step * s.batch_size * s.world_size + s.rank * s.batch_size
            yield [(index, s.epoch, first + j) for j, index in enumerate(batch)]


def max_workers() -> int:
    """The most loader workers a process may start: four per core it may use, at least 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(8, 4 * cores)


def check_num_workers(num_workers: int) -> None:
    """``ConfigError`` for more loader workers than ``max_workers()`` (each is a copy of the process:
    100 000 of them fork until memory runs out)."""
    if num_workers > max_workers():
        raise ConfigError(
            f"data.num_workers={num_workers} is more loader processes than this machine can use: at most "
            f"{max_workers()} here (4 per core, at least 8); each is a copy of the training process. "
            "2-8 usually keep a GPU busy"
        )


def dataset_options(data_cfg, run_dir=None) -> dict[str, Any]:
    """``ImageDataset`` keyword arguments from the ``data`` config: bad-image handling
    (``data.on_bad_image``, ``data.max_image_pixels``), recorded in ``<run_dir>/bad_images.tsv``."""
    options: dict[str, Any] = {}
    for key in ("on_bad_image", "max_image_pixels"):
        if key in data_cfg:
            options[key] = getattr(data_cfg[key], "value", data_cfg[key])
    if run_dir is not None:
        options["bad_image_record"] = os.path.join(os.fspath(run_dir), BAD_IMAGES_FILE)
    return options


def build_train_loader(
    samples: Sequence[Sample],
    labels: Sequence[int],
    transform: Transform,
    batch_size: int,
    samples_per_class: int,
    num_workers: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    options: Mapping[str, Any] | None = None,
    steps_per_epoch: int | None = None,
) -> paddle.io.DataLoader:
    """P x K batches ``[images [B, 3, S, S] float32, labels [B] int64]`` with ``labels``
    (usually contiguous training labels, aligned with ``samples``).

    ``batch_size`` is per process; with ``world_size`` > 1 each rank gets its share of every
    global batch (see ``PKBatchSampler``). Call ``set_loader_epoch(loader, epoch)`` before each
    epoch. Host tensors; workers (``num_workers`` > 0) persist across epochs. ``options``: more
    ``ImageDataset`` arguments (``dataset_options``). ``steps_per_epoch``: at most that many
    batches per epoch (``len(loader)``), the first ones of the full epoch's order.
    """
    check_num_workers(num_workers)
    dataset = ImageDataset(samples, transform, labels=labels, seed=seed, **(options or {}))
    sampler = PKBatchSampler(labels, batch_size, samples_per_class, seed=seed, rank=rank, world_size=world_size)
    return GuardedDataLoader(
        dataset,
        batch_sampler=KeyedBatches(sampler, steps_per_epoch),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        places=paddle.CPUPlace(),
    )


def build_eval_loader(
    samples: Sequence[Sample],
    transform: Transform,
    batch_size: int,
    num_workers: int,
    options: Mapping[str, Any] | None = None,
) -> paddle.io.DataLoader:
    """Batches ``[images [B, 3, S, S] float32, labels [B] int64]`` (original labels) in
    ``samples`` order; the last batch may be smaller. Host tensors. ``options``: as for
    ``build_train_loader``."""
    check_num_workers(num_workers)
    return GuardedDataLoader(
        ImageDataset(samples, transform, **(options or {})),
        batch_size=batch_size,
        shuffle=False,
        drop_last=False,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        places=paddle.CPUPlace(),
    )


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


class GuardedDataLoader(paddle.io.DataLoader):
    """``paddle.io.DataLoader`` whose iteration ends with ``DataError`` when its thread or a worker
    fails (instead of hanging or "Blocking queue is killed"), and which starts fresh workers after
    an iteration left mid-way (instead of ``IndexError: pop from empty list``). Its workers die with
    this process (``_DieWithParent``)."""

    def __init__(self, *args, **kwargs):
        self._die_with_parent = _DieWithParent(kwargs.pop("worker_init_fn", None))
        super().__init__(*args, worker_init_fn=self._die_with_parent, **kwargs)

    def __iter__(self) -> Iterator:
        if (
            self._persistent_workers
            and getattr(self, "_iterator", None) is not None
            and not getattr(self, "_finished", True)
        ):
            log.debug("the previous epoch of a loader with persistent workers stopped mid-way: restarting them")
            self._iterator._try_shutdown_all(1)
            self._iterator = None
        self._finished = False
        self._die_with_parent.parent = os.getpid()  # the workers start now, as children of this process
        _install_hook()
        try:
            iterator = super().__iter__()  # starts the thread (and workers), which prefetch batches
        except Exception as raised:
            raise _data_error(raised, "in the data loader") from raised
        _watch(iterator)
        return self._guarded(iterator)

    def _guarded(self, iterator) -> Iterator:
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                error = _failure(iterator, wait=0.0)
                if error is not None:
                    raise _data_error(error) from error
                self._finished = True
                return
            except Exception as raised:
                error = _failure(iterator, wait=1.0)  # the thread's hook may still be recording it
                if error is not None:
                    raise _data_error(error) from error
                if "Blocking queue is killed" in str(raised) or "DataLoader reader thread" in str(raised):
                    raise DataError(
                        "the data loader stopped: a loader worker exited unexpectedly (killed, or out "
                        "of memory?); see the messages above, or try data.num_workers=0"
                    ) from raised
                raise _data_error(raised, "in the data loader") from raised
            yield batch


class _DieWithParent:
    """A loader's ``worker_init_fn``: the worker ends when the process that started it does, then
    calls ``init_fn`` (the caller's own, if any).

    Paddle's workers check their parent only between batches, and one blocked writing a batch
    nobody reads lives on for minutes. A daemon thread in the worker watches the parent instead;
    when it is gone it removes the shared-memory files the worker still holds (a kill by the
    kernel's parent-death signal would leave them in /dev/shm) and exits the worker. Batches already
    handed to the killed parent stay in /dev/shm: that process can no longer remove them.
    """

    def __init__(self, init_fn=None):
        self.init_fn = init_fn
        self.parent = os.getpid()

    def __call__(self, worker_id: int) -> None:
        if os.getppid() != self.parent:  # the parent ended before the watch began
            _exit_worker()
        threading.Thread(target=_exit_with_parent, args=(self.parent,), name="recog-parent-watch", daemon=True).start()
        if self.init_fn is not None:
            self.init_fn(worker_id)


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    _exit_worker()


def _exit_worker() -> None:
    try:
        from paddle.io.multiprocess_utils import _cleanup_mmap

        _cleanup_mmap()  # the batches this worker put in shared memory, which nobody will read now
    except Exception:  # noqa: BLE001 - a Paddle without it: exit all the same
        pass
    os._exit(1)  # not sys.exit: a worker blocked on its queue would wait for a reader that is gone


# Iterator -> the exception its loader thread died of; the threads' hook records it.
_failures: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_watched: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # id(thread) -> iterator
_orphans: dict[int, BaseException] = {}  # id(thread) -> exception, of a loader thread that died before _watch
_lock = threading.Lock()
_previous_hook = None


def _install_hook() -> None:
    global _previous_hook
    with _lock:
        if _previous_hook is None:
            _previous_hook = threading.excepthook
            threading.excepthook = _thread_hook


def _watch(iterator) -> None:
    """Route uncaught exceptions of ``iterator``'s loader thread to ``_failures`` (``_install_hook`` first:
    the thread starts, and may fail, before the iterator is returned)."""
    thread = getattr(iterator, "_thread", None)
    if thread is None:
        return
    with _lock:
        _watched[id(thread)] = iterator
        _failures.pop(iterator, None)
        orphan = _orphans.pop(id(thread), None)
    if orphan is not None:
        _record(iterator, orphan)


def _thread_hook(args) -> None:
    with _lock:
        iterator = _watched.get(id(args.thread))
        if iterator is None or getattr(iterator, "_thread", None) is not args.thread:
            iterator = None
            if args.exc_value is not None and (args.thread.name or "").endswith("(_thread_loop)"):
                _orphans[id(args.thread)] = args.exc_value  # a loader thread not watched yet
                return
    if iterator is None or args.exc_value is None:
        _previous_hook(args)
        return
    _record(iterator, args.exc_value)


def _record(iterator, error: BaseException) -> None:
    _failures[iterator] = error
    try:  # wake the main thread, which waits on the queue this thread no longer fills
        iterator._exit_thread_unexpectedly()
    except Exception:  # already closed
        pass


def _failure(iterator, wait: float) -> BaseException | None:
    deadline = time.monotonic() + wait
    while True:
        error = _failures.get(iterator)
        if error is not None or time.monotonic() >= deadline:
            return error
        time.sleep(0.02)


def _data_error(error: BaseException, place: str = "in the loader thread") -> DataError:
    """``DataError`` naming a loader thread's or worker's exception and where it was raised."""
    if isinstance(error, DataError):
        return DataError(str(error))
    text = str(error).strip()
    if "DataLoader worker(" in text:  # Paddle's re-raise of a worker's exception: the last line is the original
        where, lines = "in a loader worker", [line for line in text.splitlines() if line.strip()]
        text = lines[-1].strip() if lines else text
    else:
        frames = traceback.extract_tb(error.__traceback__)
        frame = frames[-1] if frames else None
        where = f"{place}, at {frame.filename}:{frame.lineno} ({frame.name})" if frame else place
        text = f"{type(error).__name__}: {text}"
    return DataError(f"data loading failed {where}: {text}")
