"""Evaluation metrics (NumPy only): rank a gallery once (``rank``: a ``RetrievalResults``), and read
the metrics off it (``recog.metrics.ranks``, where their names are defined)."""

from recog.metrics.binary import binarize, pack_bits, unpack_bits
from recog.metrics.ranks import metric_names
from recog.metrics.results import RetrievalResults
from recog.metrics.retrieval import format_metrics_table, hamming_metrics, rank, retrieval_metrics

__all__ = [
    "RetrievalResults",
    "binarize",
    "format_metrics_table",
    "hamming_metrics",
    "metric_names",
    "pack_bits",
    "rank",
    "retrieval_metrics",
    "unpack_bits",
]
