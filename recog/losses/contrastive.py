"""Contrastive loss on cosine similarity, in the form used with cross-batch memory (Wang et al.
2020, "Cross-Batch Memory for Embedding Learning")."""

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from recog.losses._pairs import flat_labels, same_class


class ContrastiveLoss(nn.Layer):
    """``loss = 1/N sum_i [ sum_{p} (1 - s_ip) + sum_{n} relu(s_in - margin) ]``.

    ``s_ij`` is the cosine similarity of anchor i and reference j (features L2-normalised with
    eps 1e-12), p runs over references of i's class and n over the others. Positive pairs are
    pulled to similarity 1, negative pairs pushed below ``margin``. The sums are over pairs and
    the result is divided by the number of anchors N, as in the XBM reference code.

    By default the references are the batch itself, without the pair (i, i). Given
    ``ref_inputs`` / ``ref_labels`` (e.g. a memory of past features, see ``XBM``) every anchor is
    compared with every reference, and no pair is excluded.

    Differences from the XBM reference code: the negative term is the hinge ``relu(s - margin)``
    of the paper rather than ``s * [s > margin]``, and self-pairs are excluded by index rather
    than by dropping positives with ``s >= 1 - 1e-5``.

    Reads ``features`` [N, D]; any batch works (P x K gives it positive pairs).

    Args:
        margin: similarity above which a negative pair is penalised (reference code: 0.5).
    """

    def __init__(self, margin: float = 0.5):
        super().__init__()
        self.margin = float(margin)

    def forward(
        self,
        inputs: paddle.Tensor,
        labels: paddle.Tensor,
        ref_inputs: paddle.Tensor | None = None,
        ref_labels: paddle.Tensor | None = None,
    ) -> paddle.Tensor:
        """inputs: [N, D] float32; labels: [N] or [N, 1] int; optional references ``ref_inputs``
        [M, D] with ``ref_labels`` [M] or [M, 1] (both or neither). Returns a scalar."""
        if (ref_inputs is None) != (ref_labels is None):
            raise ValueError("ContrastiveLoss needs both ref_inputs and ref_labels, or neither")
        n = inputs.shape[0]
        labels = flat_labels(labels, n, "ContrastiveLoss")
        x = F.normalize(inputs, axis=1)
        if ref_inputs is None:
            refs, ref_labels = x, labels
        else:
            refs = F.normalize(ref_inputs, axis=1)
            ref_labels = flat_labels(ref_labels, ref_inputs.shape[0], "ContrastiveLoss (references)")
        sim = paddle.matmul(x, refs, transpose_y=True)  # [N, M]
        same = same_class(labels, ref_labels)
        is_pos = same & ~paddle.eye(n).astype("bool") if ref_inputs is None else same
        pos_term = paddle.where(is_pos, 1.0 - sim, paddle.zeros_like(sim))
        neg_term = paddle.where(same, paddle.zeros_like(sim), F.relu(sim - self.margin))
        return (pos_term.sum() + neg_term.sum()) / n
