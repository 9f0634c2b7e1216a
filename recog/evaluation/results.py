"""What an eval returns and how runs use it: the monitored metric that picks the best model
(``trainer.monitor``, one of ``recog.metrics.metric_names``, higher is better) and ``metrics.json``."""

import json
import math
from collections.abc import Mapping
from pathlib import Path

from omegaconf import DictConfig

from recog.errors import ConfigError
from recog.metrics.ranks import metric_names
from recog.utils import atomic


def check_monitor(cfg: DictConfig) -> str:
    """``trainer.monitor``, or ``ConfigError`` listing the valid names (``recog.metrics.metric_names``)
    when no eval returns it."""
    monitor = str(cfg.trainer.monitor)
    names = metric_names(cfg.eval.recall_at)
    if monitor not in names:
        raise ConfigError(
            f"trainer.monitor={monitor} is not an eval metric; choose one of {', '.join(names)} "
            "(recall_at_K and precision_at_K for K in eval.recall_at); higher is better"
        )
    return monitor


def score(metrics: Mapping[str, float] | None, monitor: str) -> float:
    """The monitored metric of ``metrics`` (-inf without metrics, or for NaN: never the best)."""
    value = float((metrics or {}).get(monitor, float("-inf")))
    return value if not math.isnan(value) else float("-inf")


def is_better(metrics: Mapping[str, float], best: Mapping[str, float] | None, monitor: str) -> bool:
    """Whether ``metrics`` beat ``best`` (None: no model yet) on ``monitor``; ties keep the earlier model."""
    return best is None or score(metrics, monitor) > score(best, monitor)


def write_metrics(metrics: dict[str, float], path: Path) -> None:
    """``metrics.json``: the metrics as sorted, indented JSON, written atomically."""
    atomic.write_text(path, json.dumps(metrics, indent=2, sort_keys=True), "metrics")
