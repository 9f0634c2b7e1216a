"""Supervised contrastive loss (Khosla et al. 2020, "Supervised Contrastive Learning")."""

import paddle
import paddle.nn as nn

from recog.losses._pairs import check_pk_batch, pair_masks


class SupConLoss(nn.Layer):
    """SupCon ``L_out`` on one view per sample: the other samples of the class are the positives.

    Features are L2-normalised (``x / (|x|_2 + 1e-12)``), ``z_ij = x_i.x_j / temperature``; for each
    anchor i with positives ``P(i) = {j != i: y_j = y_i}``:
    ``l_i = -(temperature / base_temperature) * mean_{p in P(i)} [z_ip - log sum_{a != i} exp(z_ia)]``;
    ``loss = mean_i l_i``.

    PaddleClas's ``SupConLoss`` takes ``[bsz, n_views, D]`` (it reshapes a batch into groups of
    ``views`` consecutive samples); this one takes ``features [N, D]`` with labels, and each
    sample is a single view. On an ordered P x K batch it equals PaddleClas with ``views=K``
    and ``contrast_mode="all"``. With one view ``contrast_mode="one"`` (anchors from the first
    view only) selects the same anchors as ``"all"``, so the two modes give the same value;
    the option is kept for config compatibility.
    The batch must be P x K: every anchor needs a positive (and a negative).

    Args:
        temperature: softmax temperature.
        base_temperature: the loss is scaled by ``temperature / base_temperature``.
        contrast_mode: ``"all"`` or ``"one"`` (identical with one view).
    """

    def __init__(self, temperature: float = 0.07, base_temperature: float = 0.07, contrast_mode: str = "all"):
        super().__init__()
        if contrast_mode not in ("all", "one"):
            raise ValueError(f"SupConLoss contrast_mode must be 'all' or 'one', got {contrast_mode!r}")
        if temperature <= 0 or base_temperature <= 0:
            raise ValueError(
                f"SupConLoss temperatures must be positive, got temperature={temperature}, "
                f"base_temperature={base_temperature}"
            )
        self.temperature = temperature
        self.base_temperature = base_temperature
        self.contrast_mode = contrast_mode

    def forward(self, inputs: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
        """inputs: features [N, D] float32; labels: [N] or [N, 1] int. Returns a scalar."""
        labels, is_pos, is_neg = pair_masks(inputs, labels, "SupConLoss")
        check_pk_batch(is_pos, is_neg, labels, "SupConLoss")
        x = inputs / (paddle.norm(inputs, p=2, axis=-1, keepdim=True) + 1e-12)
        logits = paddle.matmul(x, x, transpose_y=True) / self.temperature  # [N, N]

        is_self = paddle.eye(logits.shape[0]).astype("bool")
        others = paddle.where(is_self, paddle.full_like(logits, float("-inf")), logits)
        log_prob = logits - paddle.logsumexp(others, axis=1, keepdim=True)  # [N, N]
        pos = is_pos.astype(logits.dtype)
        mean_log_prob_pos = paddle.where(is_pos, log_prob, paddle.zeros_like(log_prob)).sum(axis=1) / pos.sum(axis=1)
        return -(self.temperature / self.base_temperature) * mean_log_prob_pos.mean()
