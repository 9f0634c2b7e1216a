"""Evaluation metrics (NumPy only)."""

from recog.metrics.binary import binarize, hamming_metrics, pack_bits, unpack_bits
from recog.metrics.retrieval import format_metrics_table, retrieval_metrics

__all__ = ["binarize", "format_metrics_table", "hamming_metrics", "pack_bits", "retrieval_metrics", "unpack_bits"]
