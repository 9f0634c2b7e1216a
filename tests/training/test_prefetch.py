"""prefetch_to_device: every batch once, in order, host tensors beside their device copies."""

import numpy as np
import paddle

import recog  # noqa: F401
from recog.training.prefetch import prefetch_to_device


def test_prefetch_yields_every_batch_in_order_with_its_device_copy():
    batches = [(paddle.full([2, 3], float(i)), paddle.to_tensor([i, i + 1])) for i in range(5)]
    out = list(prefetch_to_device(iter(batches)))
    assert len(out) == len(batches)
    for (images, labels), (host_images, host_labels, dev_images, dev_labels) in zip(batches, out):
        assert host_images is images and host_labels is labels
        np.testing.assert_array_equal(dev_images.numpy(), images.numpy())
        np.testing.assert_array_equal(dev_labels.numpy(), labels.numpy())
    assert list(prefetch_to_device(iter([]))) == []
