"""Evaluation shared by the stages: features of the eval splits (``Evaluator``, ``extract_features``),
model selection by ``trainer.monitor`` and ``metrics.json``."""

from recog.evaluation.evaluator import RETRIEVAL_PICTURE, WORST_PICTURE, EvalInterrupted, Evaluator, extract_features
from recog.evaluation.results import check_monitor, is_better, score, write_metrics

__all__ = [
    "RETRIEVAL_PICTURE",
    "WORST_PICTURE",
    "EvalInterrupted",
    "Evaluator",
    "check_monitor",
    "extract_features",
    "is_better",
    "score",
    "write_metrics",
]
