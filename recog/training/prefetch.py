"""Batches moved to the device one step ahead of the step that uses them (GPU).

``prefetch_to_device(batches)`` yields ``(images, labels, device_images, device_labels)``: the
loader's host tensors (for host-side checks, no device read-back) and their device copies. On a
GPU the next batch is pinned (page-locked host memory) and its copy issued without blocking before
the current batch is handed out, so the copy overlaps the step; on the CPU the device copies are
the host tensors themselves and nothing is read ahead.
"""

from collections.abc import Iterable, Iterator

import paddle

Batch = tuple[paddle.Tensor, paddle.Tensor]


def _to_device(tensor: paddle.Tensor, device: str) -> paddle.Tensor:
    pinned = tensor.pin_memory() if hasattr(tensor, "pin_memory") else tensor
    return pinned.to(device, blocking=False)


def prefetch_to_device(batches: Iterable[Batch]) -> Iterator[tuple[paddle.Tensor, ...]]:
    """``(images, labels, device_images, device_labels)`` for each ``(images, labels)`` of ``batches``,
    in order; on a GPU the following batch's copy is in flight while the caller uses this one."""
    device = paddle.get_device()
    if device == "cpu":
        for images, labels in batches:
            yield images, labels, images, labels
        return
    iterator = iter(batches)
    ahead = None
    for images, labels in iterator:
        current = (images, labels, _to_device(images, device), _to_device(labels, device))
        if ahead is not None:
            yield ahead
        ahead = current
    if ahead is not None:
        yield ahead
