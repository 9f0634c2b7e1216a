"""Python API: build the objects ``run.py`` builds, from the same config tree.

The builders live in ``recog.builders`` (one place); they are re-exported here with ``compose``
and ``load_model``.
"""

from collections.abc import Iterable, Sequence

from omegaconf import DictConfig

from recog.builders import (
    build_evaluator,
    build_loss,
    build_model,
    build_optimizer,
    build_train_loader,
    build_trainer,
    component_class,
    load_splits,
)
from recog.config import compose as _compose
from recog.models.rec_model import RecModel
from recog.utils import checkpoint

__all__ = [
    "build_evaluator",
    "build_loss",
    "build_model",
    "build_optimizer",
    "build_train_loader",
    "build_trainer",
    "component_class",
    "compose",
    "load_model",
    "load_splits",
]


def compose(overrides: Iterable[str] = ()) -> DictConfig:
    """The config tree ``python run.py OVERRIDES`` sees; raises ``ConfigError`` on bad input."""
    return _compose(overrides)


def load_model(model_path, trusted_targets: Sequence[str] = (), searchpath: Sequence[str] | None = None) -> RecModel:
    """The trained model of a ``best_model/`` or checkpoint directory, in eval mode.

    Its ``config.yaml`` is checked before anything is built (``recog.utils.checkpoint.load_config``):
    only registered components (``conf/`` plus ``searchpath``, the ``hydra.searchpath`` entries
    of your own components) or ``trusted_targets`` are built; the weights come from its safetensors.
    """
    trained_cfg = checkpoint.load_config(model_path, trusted_targets=trusted_targets, searchpath=searchpath)
    model = build_model(trained_cfg)
    checkpoint.load_model_weights(model_path, model)
    model.eval()
    return model
