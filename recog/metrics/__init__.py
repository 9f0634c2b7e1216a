"""Evaluation metrics (NumPy only)."""

from recog.metrics.retrieval import format_metrics_table, retrieval_metrics

__all__ = ["retrieval_metrics", "format_metrics_table"]
