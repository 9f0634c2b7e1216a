import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import paddle
import pytest

import recog  # noqa: F401
from recog.data import ImageDataset, Sample, build_eval_loader, build_train_loader, build_transform, set_loader_epoch

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture
def samples(tmp_path):
    """24 images of 4 classes; pixel value = 10 * index so images can be told apart."""
    out = []
    for i in range(24):
        path = str(tmp_path / f"{i}.png")
        image = np.full((6, 5, 3), 10 * i, np.uint8)
        image[:, 0] = 255  # asymmetric, so a flip is visible
        cv2.imwrite(path, image)
        out.append(Sample(path, 10 + i % 4))
    return out


@pytest.mark.parametrize("num_workers", [0, 2])
def test_train_loader_shapes_and_pk_batches(samples, num_workers):
    labels = [s.label - 10 for s in samples]
    transform = build_transform(8, MEAN, STD, train=True, hflip=True)
    loader = build_train_loader(
        samples, labels, transform, batch_size=6, samples_per_class=3, num_workers=num_workers, seed=0
    )
    epochs = []
    for epoch in range(2):
        set_loader_epoch(loader, epoch)
        batches = list(loader)
        assert len(batches) == 4
        for images, batch_labels in batches:
            assert images.shape == [6, 3, 8, 8] and images.dtype == paddle.float32
            assert batch_labels.shape == [6] and batch_labels.dtype == paddle.int64
            rows = batch_labels.numpy().reshape(2, 3)
            assert (rows == rows[:, :1]).all() and rows[0, 0] != rows[1, 0]
            assert set(rows.ravel()) <= {0, 1, 2, 3}
        epochs.append(np.concatenate([b[0].numpy() for b in batches]))
    assert not np.array_equal(epochs[0], epochs[1])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_eval_loader_keeps_order(samples, num_workers):
    transform = build_transform(4, MEAN, STD, train=False, hflip=True)
    loader = build_eval_loader(samples, transform, batch_size=10, num_workers=num_workers)
    batches = list(loader)
    assert [b[0].shape[0] for b in batches] == [10, 10, 4]
    labels = np.concatenate([b[1].numpy() for b in batches])
    assert labels.tolist() == [s.label for s in samples]
    images = np.concatenate([b[0].numpy() for b in batches])
    np.testing.assert_allclose(images[:, 0, 0, -1], (10 * np.arange(24) / 255 - 0.5) / 0.25, rtol=1e-5)


def test_augmentation_is_seeded_per_epoch(samples):
    transform = build_transform(5, MEAN, STD, train=True, hflip=True)

    def flips(seed, epoch):
        dataset = ImageDataset(samples, transform, seed=seed)
        dataset.set_epoch(epoch)
        return [bool(dataset[i][0][0, 0, 0] < 1.5) for i in range(len(dataset))]

    assert flips(0, 0) == flips(0, 0)
    assert flips(0, 0) != flips(0, 1)
    assert True in flips(0, 0) and False in flips(0, 0)


def _in_thread(fn, timeout=60):
    """Run ``fn`` in a daemon thread; ``("hung", None)`` if it has not returned after ``timeout`` s
    (a hang must fail the test, not stall the suite), else ``("raised" | "returned", value)``."""
    import threading

    result = []

    def target():
        try:
            result.append(("returned", fn()))
        except BaseException as error:  # noqa: B902 - reported to the test
            result.append(("raised", error))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    return result[0] if result else ("hung", None)


@pytest.mark.slow
@pytest.mark.parametrize("num_workers", [0, 1])
def test_short_epochs_keep_persistent_workers_in_step(samples, num_workers):
    """Epochs cut by steps_per_epoch end normally, and the next one starts (no IndexError at epoch 2)."""
    labels = [s.label - 10 for s in samples]
    transform = build_transform(8, MEAN, STD, train=True, hflip=True)
    loader = build_train_loader(
        samples,
        labels,
        transform,
        batch_size=6,
        samples_per_class=3,
        num_workers=num_workers,
        seed=0,
        steps_per_epoch=2,
    )
    full = build_train_loader(samples, labels, transform, batch_size=6, samples_per_class=3, num_workers=0, seed=0)
    assert len(loader) == 2 and len(full) == 4
    for epoch in range(3):
        set_loader_epoch(loader, epoch)
        set_loader_epoch(full, epoch)
        got = [b[1].numpy() for b in loader]
        expected = [b[1].numpy() for b in full][:2]  # the first batches of the whole epoch's order
        assert len(got) == 2 and all((g == e).all() for g, e in zip(got, expected))


def test_an_epoch_left_mid_way_restarts_persistent_workers(samples):
    """A loop that breaks out of an epoch does not break the next one."""
    labels = [s.label - 10 for s in samples]
    transform = build_transform(8, MEAN, STD, train=True, hflip=True)
    loader = build_train_loader(samples, labels, transform, batch_size=6, samples_per_class=3, num_workers=1, seed=0)
    for epoch in range(3):
        set_loader_epoch(loader, epoch)
        for _ in loader:
            break  # left after one batch, as a stop request or a capped loop does
    set_loader_epoch(loader, 3)
    assert len(list(loader)) == 4


class _Failing(ImageDataset):
    def __getitem__(self, index):
        if (index[0] if isinstance(index, tuple) else index) == 5:
            raise RuntimeError("boom in the dataset")
        return super().__getitem__(index)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_an_exception_in_the_loader_thread_or_a_worker_ends_the_iteration_with_a_message(samples, num_workers):
    """A failure in Paddle's loader thread or a worker ends the iteration with a message instead of a hang."""
    from recog.data.loader import GuardedDataLoader
    from recog.errors import DataError

    transform = build_transform(8, MEAN, STD, train=False, hflip=False)
    loader = GuardedDataLoader(
        _Failing(samples, transform), batch_size=4, num_workers=num_workers, places=paddle.CPUPlace()
    )
    # Started in the main thread, as the training loop starts it: Paddle installs its SIGCHLD handler
    # when a process's first multi-worker iterator starts, which Python allows only there.
    iterator = iter(loader)
    outcome, value = _in_thread(lambda: list(iterator))  # a thread: a hang fails instead of blocking
    assert outcome == "raised", outcome
    assert isinstance(value, DataError) and "RuntimeError: boom in the dataset" in str(value), repr(value)


def test_an_exception_in_the_batch_sampler_ends_the_iteration_with_a_message(samples):
    """The training loader's sampler runs in Paddle's loader thread too (e.g. a negative epoch)."""
    from recog.errors import DataError

    labels = [s.label - 10 for s in samples]
    transform = build_transform(8, MEAN, STD, train=True, hflip=True)
    loader = build_train_loader(samples, labels, transform, batch_size=6, samples_per_class=3, num_workers=0, seed=0)
    set_loader_epoch(loader, -5)  # numpy refuses a negative seed, in the loader thread
    outcome, value = _in_thread(lambda: list(loader))
    assert outcome == "raised" and isinstance(value, DataError), (outcome, value)
    assert "in the loader thread" in str(value) and "negative" in str(value)


_WORKERS_THEN_SLEEP = """
import multiprocessing, sys, time
import numpy as np
import paddle
from recog.data.loader import GuardedDataLoader


class Zeros(paddle.io.Dataset):
    def __len__(self):
        return 10000

    def __getitem__(self, i):
        return np.zeros((3, 64, 64), np.float32), np.int64(i)


loader = GuardedDataLoader(Zeros(), batch_size=64, num_workers=2, places=paddle.CPUPlace())
next(iter(loader))  # the workers now fill their queues, which nobody reads once this process is gone
print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
time.sleep(600)
"""


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_loader_workers_end_with_a_killed_process():
    """SIGKILL of a trainer left its loader workers alive for minutes (blocked writing batches)."""
    process = subprocess.Popen([sys.executable, "-c", _WORKERS_THEN_SLEEP], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(pid) for pid in process.stdout.readline().split()]
        assert len(workers) == 2 and all(map(_running, workers))
    finally:
        process.kill()
        process.wait()
    deadline = time.monotonic() + 20  # the watch thread: within half a second
    while any(map(_running, workers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [pid for pid in workers if _running(pid)]
    for pid in left:  # do not leave them to the next test
        os.kill(pid, signal.SIGKILL)
    assert not left


def test_a_users_worker_init_fn_still_runs_after_the_parent_watch(samples, tmp_path):
    from recog.data.loader import GuardedDataLoader

    transform = build_transform(8, MEAN, STD, train=False, hflip=False)
    loader = GuardedDataLoader(
        ImageDataset(samples[:4], transform),
        batch_size=2,
        num_workers=1,
        worker_init_fn=lambda worker: (tmp_path / f"worker_{worker}_ran").write_text(str(os.getpid())),
        places=paddle.CPUPlace(),
    )
    assert len(list(loader)) == 2
    ran = tmp_path / "worker_0_ran"
    assert ran.is_file() and int(ran.read_text()) != os.getpid()  # in the worker process
