"""The decision threshold an export carries: ``threshold.json`` beside the model files.

A query is answered with its best gallery match's label when the match's score passes the
threshold, and with ``unknown`` otherwise. The threshold is chosen by an evaluation on labelled
pairs at a target false-match rate (FMR: the fraction of different-class pairs that pass);
``fnmr`` is the fraction of same-class pairs that fail at that threshold (the price paid).

Scores follow ``recog.search``'s conventions: ``similarity="inner_product"`` (cosine for
normalised features; higher is closer, a score passes when ``>= score``) or ``"hamming"``
(binary codes; lower is closer, a distance passes when ``<= score``).

File format (JSON object)::

    {"score": 0.62, "target_fmr": 0.001, "fnmr": 0.12, "similarity": "inner_product",
     "positive_pairs": 15400, "negative_pairs": 3100000}

The file comes from a model folder a user may have received from elsewhere: ``load`` validates
every field (types, finite values, ranges) and never executes anything.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from recog.errors import ConfigError

FILE_NAME = "threshold.json"
SIMILARITIES = ("inner_product", "hamming")
MAX_BYTES = 4096  # a threshold file is a few fields: anything larger is not one


@dataclass(frozen=True)
class Threshold:
    """A calibrated decision threshold (see module docstring)."""

    score: float
    target_fmr: float
    fnmr: float | None = None
    similarity: str = "inner_product"
    positive_pairs: int | None = None
    negative_pairs: int | None = None

    def __post_init__(self):
        if not _is_number(self.score):
            raise ConfigError(f"threshold score must be a finite number, got {self.score!r}")
        if not _is_number(self.target_fmr) or not 0.0 < self.target_fmr < 1.0:
            raise ConfigError(f"threshold target_fmr must be in (0, 1), got {self.target_fmr!r}")
        if self.fnmr is not None and (not _is_number(self.fnmr) or not 0.0 <= self.fnmr <= 1.0):
            raise ConfigError(f"threshold fnmr must be in [0, 1], got {self.fnmr!r}")
        if self.similarity not in SIMILARITIES:
            raise ConfigError(f"threshold similarity must be one of {', '.join(SIMILARITIES)}, got {self.similarity!r}")
        for name in ("positive_pairs", "negative_pairs"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ConfigError(f"threshold {name} must be a non-negative integer, got {value!r}")

    def accepts(self, score: float) -> bool:
        """Whether a match with this score (inner product, or Hamming distance) is a known object."""
        return score >= self.score if self.similarity == "inner_product" else score <= self.score

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data) -> Threshold:
        """From a parsed ``threshold.json``; ``ConfigError`` naming the problem otherwise."""
        if not isinstance(data, dict):
            raise ConfigError(f"{FILE_NAME} must hold a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"{FILE_NAME} has unknown fields {unknown}; valid: {sorted(cls.__dataclass_fields__)}")
        if "score" not in data or "target_fmr" not in data:
            raise ConfigError(f"{FILE_NAME} needs 'score' and 'target_fmr'")
        return cls(**data)


def save(directory, threshold: Threshold) -> Path:
    """Write ``directory/threshold.json`` (atomically)."""
    from recog.utils import atomic

    return atomic.write_text(
        Path(directory) / FILE_NAME, json.dumps(threshold.to_dict(), indent=2) + "\n", "the decision threshold"
    )


def load(directory) -> Threshold | None:
    """The threshold saved in ``directory``, or None when it has none; ``ConfigError`` when the
    file is not a valid threshold (too large, not JSON, wrong fields or values)."""
    path = Path(directory) / FILE_NAME
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_BYTES:
        raise ConfigError(f"{path} is over {MAX_BYTES} bytes: not a threshold file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path} is not valid JSON: {error}") from None
    try:
        return Threshold.from_dict(data)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a number a threshold may hold")
