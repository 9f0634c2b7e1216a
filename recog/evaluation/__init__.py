"""Evaluation shared by the stages: features of the eval splits (``Evaluator``, ``extract_features``),
model selection by ``trainer.monitor`` and ``metrics.json``, the calibrated decision threshold
(``recog.evaluation.calibration``)."""

from recog.evaluation.evaluator import EvalInterrupted, Evaluator, extract_features
from recog.evaluation.report import PAIR_SCORES_PICTURE, REPORT_FILES, RETRIEVAL_PICTURE, WORST_PICTURE
from recog.evaluation.results import check_monitor, is_better, score, write_metrics

__all__ = [
    "PAIR_SCORES_PICTURE",
    "REPORT_FILES",
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
