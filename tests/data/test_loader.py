import cv2
import numpy as np
import pytest

import recog  # noqa: F401
import paddle

from recog.data import (ImageDataset, Sample, build_eval_loader, build_train_loader,
                        build_transform, set_loader_epoch)

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
    loader = build_train_loader(samples, labels, transform, batch_size=6, samples_per_class=3,
                                num_workers=num_workers, seed=0)
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
    np.testing.assert_allclose(images[:, 0, 0, -1], (10 * np.arange(24) / 255 - 0.5) / 0.25,
                               rtol=1e-5)


def test_augmentation_is_seeded_per_epoch(samples):
    transform = build_transform(5, MEAN, STD, train=True, hflip=True)
    def flips(seed, epoch):
        dataset = ImageDataset(samples, transform, seed=seed)
        dataset.set_epoch(epoch)
        return [bool(dataset[i][0][0, 0, 0] < 1.5) for i in range(len(dataset))]
    assert flips(0, 0) == flips(0, 0)
    assert flips(0, 0) != flips(0, 1)
    assert True in flips(0, 0) and False in flips(0, 0)
