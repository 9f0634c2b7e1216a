"""Python API: build the objects ``run.py`` builds, from the same config tree."""

from typing import Iterable, Optional

import paddle
from omegaconf import DictConfig, OmegaConf

from recog.config import compose as _compose
from recog.config import require_complete
from recog.config.build import build
from recog.data.splits import RetrievalSplits
from recog.errors import ConfigError
from recog.losses.weighted import WeightedLoss
from recog.models.rec_model import RecModel
from recog.models.stop_layer import truncate_after


def compose(overrides: Iterable[str] = ()) -> DictConfig:
    """The config tree ``python run.py OVERRIDES`` sees; raises ``ConfigError`` on bad input."""
    return _compose(overrides)


def load_splits(cfg: DictConfig) -> RetrievalSplits:
    """Read (for the digits: first write) the dataset named by ``cfg.dataset``."""
    require_complete(cfg, "dataset")
    return build("dataset", cfg.dataset)


def build_model(cfg: DictConfig, class_num: Optional[int] = None) -> RecModel:
    """``RecModel`` from ``cfg.backbone`` / ``neck`` / ``head``; ``neck`` or ``head`` null leaves it out.

    The head's ``class_num`` is, in order: ``cfg.head.class_num``, the ``class_num`` argument, or
    the number of training classes of ``cfg.dataset`` (which reads the dataset's lists). Input
    widths of the neck and head follow from the backbone's output at its stop layer.
    """
    backbone_cfg = OmegaConf.to_container(cfg.backbone, resolve=True)
    stop_layer = backbone_cfg.pop("stop_layer", None)
    backbone = truncate_after(build("backbone", backbone_cfg), stop_layer)
    width = _output_width(backbone, cfg.data.image_size)
    neck = None
    if cfg.neck is not None:
        neck = build("neck", cfg.neck, in_channels=width)
        width = neck.embedding_size
    head = None
    if cfg.head is not None:
        class_num = cfg.head.class_num or class_num or load_splits(cfg).num_train_classes
        head = build("head", cfg.head, embedding_size=width, class_num=class_num)
    return RecModel(backbone, stop_layer=None, neck=neck, head=head)


def build_loss(cfg: DictConfig) -> WeightedLoss:
    """``WeightedLoss`` from ``cfg.loss``: a mapping of term name -> {_target_, weight, input, ...}."""
    terms = {}
    for name, term_cfg in cfg.loss.items():
        params = OmegaConf.to_container(term_cfg, resolve=True)
        weight, key = params.pop("weight"), params.pop("input")
        terms[name] = (weight, getattr(key, "value", key), build(f"loss.{name}", params))
    if not terms:
        raise ConfigError("the loss has no terms: choose one with loss=ce|triplet|ce_triplet")
    return WeightedLoss(terms)


def _output_width(backbone: paddle.nn.Layer, image_size: int) -> int:
    """Flattened width of the backbone output for one image of ``image_size`` (a dry run)."""
    was_training = backbone.training
    backbone.eval()
    with paddle.no_grad():
        out = backbone(paddle.zeros([1, 3, image_size, image_size]))
    if was_training:
        backbone.train()
    return int(out.reshape([1, -1]).shape[1])
