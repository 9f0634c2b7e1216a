"""Evaluation metrics (NumPy only)."""

from recog.metrics.retrieval import format_metrics_table, retrieval_metrics

__all__ = ["retrieval_metrics", "format_metrics_table"]
from recog.metrics.binary import binarize, hamming_metrics, pack_bits, unpack_bits

__all__ += ["binarize", "pack_bits", "unpack_bits", "hamming_metrics"]
