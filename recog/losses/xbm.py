"""Cross-batch memory (Wang et al. 2020, "Cross-Batch Memory for Embedding Learning")."""

import inspect
from collections.abc import Mapping

import paddle
import paddle.nn as nn

from recog.errors import ConfigError
from recog.losses._pairs import flat_labels


class XBM(nn.Layer):
    """Wraps a pair-based loss so each batch is also compared with features of past batches.

    A FIFO queue keeps the (detached) features and labels of the last ``memory_size`` training
    samples. At each training step::

        loss = L(batch, batch) + memory_weight * L(batch, memory)   # memory term if non-empty
        memory <- enqueue(batch.detach())                          # after the loss is computed

    so an empty memory gives exactly the in-batch loss, and no gradient reaches the memory.
    Before training step ``start_iteration`` (counted from 0 over training-mode calls) the
    memory is neither read nor filled. In eval mode only ``L(batch, batch)`` is returned and the
    memory is left alone. The memory lives in non-persistable buffers: it is not checkpointed.
    In data-parallel training XBM gets the global batch (see ``WeightedLoss``): every rank's memory
    holds the features of all ranks, as one process's would.

    The wrapped loss must compare anchors with references:
    ``forward(inputs, labels, ref_inputs=None, ref_labels=None)`` where, without references, the
    batch is compared with itself (e.g. ``recog.losses.ContrastiveLoss``). Differences from the
    reference code: the current batch is enqueued after the memory term (the reference enqueues
    it first, so in-batch pairs are counted twice there), and the queue wraps around instead of
    overwriting its last rows when a batch does not fit before the end.

    Reads ``features`` [N, feat_dim].

    Args:
        loss: the wrapped loss: an ``nn.Layer``, or a config mapping with ``_target_``.
        memory_size: number of past samples kept (reference code: 8192).
        feat_dim: feature width (the neck's ``embedding_size``).
        start_iteration: training steps without memory (warm-up; reference code: 2000).
        memory_weight: weight of the memory term (reference code: 1.0).
    """

    def __init__(
        self, loss, memory_size: int = 8192, feat_dim: int = 512, start_iteration: int = 0, memory_weight: float = 1.0
    ):
        super().__init__()
        if memory_size < 1 or feat_dim < 1 or start_iteration < 0:
            raise ValueError(
                f"XBM needs memory_size >= 1, feat_dim >= 1 and start_iteration >= 0, got "
                f"{memory_size}, {feat_dim}, {start_iteration}"
            )
        self.loss = _as_cross_batch_loss(loss)
        self.memory_size, self.feat_dim = int(memory_size), int(feat_dim)
        self.start_iteration, self.memory_weight = int(start_iteration), float(memory_weight)
        self.register_buffer("memory_features", paddle.zeros([self.memory_size, self.feat_dim]), persistable=False)
        self.register_buffer("memory_labels", paddle.zeros([self.memory_size], dtype="int64"), persistable=False)
        self.filled = 0  # valid rows
        self.ptr = 0  # next row to write
        self.iteration = 0  # training-mode calls so far

    def forward(self, inputs: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
        """inputs: features [N, feat_dim] float32; labels: [N] or [N, 1] int. Returns a scalar."""
        if inputs.ndim != 2 or inputs.shape[1] != self.feat_dim:
            raise ConfigError(
                f"XBM feat_dim is {self.feat_dim} but the features have shape {inputs.shape}: "
                "set the loss's feat_dim to the neck's embedding_size"
            )
        labels = flat_labels(labels, inputs.shape[0], "XBM")
        loss = self.loss(inputs, labels)
        if not self.training:
            return loss
        step, self.iteration = self.iteration, self.iteration + 1
        if step < self.start_iteration:
            return loss
        if self.filled:  # row order does not matter to a pair loss: no need for memory()
            mem_features, mem_labels = self.memory_features[: self.filled], self.memory_labels[: self.filled]
            loss = loss + self.memory_weight * self.loss(inputs, labels, mem_features, mem_labels)
        self.enqueue(inputs.detach(), labels)
        return loss

    def memory(self) -> tuple[paddle.Tensor, paddle.Tensor]:
        """The stored ``(features [M, D], labels [M])``, oldest first (M <= memory_size)."""
        if self.filled < self.memory_size:
            return self.memory_features[: self.filled], self.memory_labels[: self.filled]
        order = paddle.roll(paddle.arange(self.memory_size), -self.ptr)
        return self.memory_features[order], self.memory_labels[order]

    @paddle.no_grad()
    def enqueue(self, features: paddle.Tensor, labels: paddle.Tensor) -> None:
        """Append a batch, dropping the oldest rows beyond ``memory_size``."""
        features = features.detach().astype(self.memory_features.dtype)[-self.memory_size :]
        labels = labels.reshape([-1]).astype("int64")[-self.memory_size :]
        n = features.shape[0]
        rows = (paddle.arange(n, dtype="int64") + self.ptr) % self.memory_size
        self.memory_features = paddle.scatter(self.memory_features, rows, features, overwrite=True)
        self.memory_labels = paddle.scatter(self.memory_labels, rows, labels, overwrite=True)
        self.ptr = (self.ptr + n) % self.memory_size
        self.filled = min(self.filled + n, self.memory_size)


def _as_cross_batch_loss(loss) -> nn.Layer:
    """The wrapped loss as a Layer (building a ``_target_`` mapping); ConfigError if it cannot
    take references."""
    if isinstance(loss, Mapping):  # dict or DictConfig
        from recog.config.build import build  # lazily: it pulls in Hydra

        loss = build("loss.xbm.loss", loss)
    if not isinstance(loss, nn.Layer):
        raise ConfigError(f"XBM wraps a loss Layer (or a config with _target_), got {type(loss).__name__}")
    params = inspect.signature(loss.forward).parameters
    if not {"ref_inputs", "ref_labels"} <= set(params):
        raise ConfigError(
            f"XBM cannot wrap {type(loss).__name__}: its forward must accept ref_inputs and ref_labels "
            "(the memory), as recog.losses.ContrastiveLoss does"
        )
    return loss
