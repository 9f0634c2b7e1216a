"""The model and the loss from config: ``build_model`` (``RecModel``: backbone, stop layer, neck,
head) and ``build_loss`` (``WeightedLoss``), with the widths and class counts they take from each
other and from the dataset."""

import logging

import paddle
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from recog.builders.data import load_splits
from recog.config.build import build_component
from recog.errors import ConfigError, RecogError
from recog.losses.weighted import WeightedLoss
from recog.models.rec_model import RecModel
from recog.models.stop_layer import truncate_after
from recog.models.weights import load_pretrained

log = logging.getLogger(__name__)


def build_model(cfg: DictConfig, class_num: int | None = None) -> RecModel:
    """``RecModel`` from ``cfg.backbone`` / ``neck`` / ``head``; ``neck`` or ``head`` null leaves it out.

    ``backbone.pretrained`` (a PaddleClas ``.pdparams`` or a ``.safetensors`` file) is loaded by
    parameter name into the whole backbone before it is cut at ``backbone.stop_layer``. The
    head's ``class_num`` is, in order: ``cfg.head.class_num``, the ``class_num`` argument, or the
    number of training classes of ``cfg.dataset`` (which reads the dataset's lists). Input widths
    of the neck and head follow from the backbone (a multi-scale neck, ``multi_scale = True``,
    gets the channels of every backbone stage); ``model.embedding_size`` is the feature width.
    """
    backbone = build_component("backbone", cfg.backbone)
    pretrained = cfg.backbone.get("pretrained")
    if pretrained:
        load_pretrained(backbone, pretrained)
    backbone = truncate_after(backbone, cfg.backbone.get("stop_layer"))
    neck = None
    if cfg.neck is None:
        width = _output_width(backbone, cfg.data.image_size)
    else:
        # A multi-scale neck reads the backbone's stages, whatever the stop layer.
        multi_scale = getattr(component_class("neck", cfg.neck), "multi_scale", False)
        in_channels = _stage_channels(backbone) if multi_scale else _output_width(backbone, cfg.data.image_size)
        neck = build_component("neck", cfg.neck, in_channels=in_channels)
        width = neck.embedding_size
    head = None
    if cfg.head is not None:
        class_num = cfg.head.get("class_num") or class_num or _dataset_class_num(cfg)
        head = build_component("head", cfg.head, embedding_size=width, class_num=class_num)
    model = RecModel(backbone, neck=neck, head=head)
    model.embedding_size = width
    return model


def build_loss(cfg: DictConfig, class_num: int | None = None, embedding_size: int | None = None) -> WeightedLoss:
    """``WeightedLoss`` from ``cfg.loss``: term name -> ``{weight, input, fn: {_target_, ...}}``.

    ``fn`` arguments left null are filled in: ``class_num`` / ``num_classes`` with ``class_num``
    (else ``cfg.head.class_num``, else the dataset's training classes) and ``feat_dim`` with
    ``embedding_size`` (else ``cfg.neck.embedding_size``).
    """
    terms = {}
    for name, term_cfg in cfg.loss.items():
        if not OmegaConf.is_config(term_cfg) or "fn" not in term_cfg:
            raise ConfigError(f"loss.{name} must be {{weight, input, fn: {{_target_, ...}}}}, got {term_cfg}")
        params = OmegaConf.to_container(term_cfg.fn, resolve=True)
        for field in ("class_num", "num_classes"):
            if field in params and params[field] is None:
                class_num = (
                    class_num
                    or (cfg.head.get("class_num") if cfg.head is not None else None)
                    or load_splits(cfg).num_train_classes
                )
                params[field] = class_num
        if params.get("feat_dim", 0) is None:
            embedding_size = embedding_size or (cfg.neck.get("embedding_size") if cfg.neck is not None else None)
            if not embedding_size:
                raise ConfigError(
                    f"loss.{name}.fn.feat_dim is not set and there is no neck to take it from: "
                    f"set loss.{name}.fn.feat_dim to the feature width"
                )
            params["feat_dim"] = embedding_size
        terms[name] = (term_cfg.weight, term_cfg.input, build_component("loss", params, key=f"loss.{name}.fn"))
    if not terms:
        raise ConfigError("the loss has no terms: choose one with loss=ce|triplet_v2|ce_triplet")
    return WeightedLoss(terms)


def _dataset_class_num(cfg: DictConfig) -> int:
    """The training classes of ``cfg.dataset``, for a head whose ``class_num`` was not given (said in
    a warning: reading the dataset may first write the digits under ``paths.output_root``)."""
    where = OmegaConf.select(cfg, "paths.output_root")
    log.warning(
        "head.class_num is not set and build_model got no class_num: counting the training classes of "
        "the dataset (%s; the digits are written under paths.output_root=%s on first use). Set "
        "head.class_num=N or call build_model(cfg, class_num=N) to build without the dataset",
        OmegaConf.select(cfg, "dataset._target_"),
        where,
    )
    try:
        return load_splits(cfg).num_train_classes
    except RecogError as error:
        raise ConfigError(
            f"the head needs a class count: set head.class_num=N or call build_model(cfg, "
            f"class_num=N); taking it from the dataset failed: {error}"
        ) from None


def component_class(group: str, node):
    """The class (or factory) a component node names, imported (``ConfigError`` if it cannot be)."""
    target = node.get("_target_")
    try:
        return get_object(target)
    except Exception as error:  # noqa: BLE001 - ImportError, AttributeError, the module's own failure
        raise ConfigError(f"{group}._target_={target} cannot be imported: {error}") from None


def _stage_channels(backbone: paddle.nn.Layer) -> list:
    """Channels of every stage of the backbone, finest first (what a multi-scale neck picks from)."""
    channels = getattr(backbone, "stage_channels", None)
    if channels is None or not hasattr(backbone, "stage_features"):
        raise ConfigError(
            f"a multi-scale neck needs a backbone that exposes its stages; "
            f"{type(backbone).__name__} does not (use backbone=pplcnet or resnet_vd)"
        )
    return [int(c) for c in channels]


def _output_width(backbone: paddle.nn.Layer, image_size: int) -> int:
    """Flattened width of the backbone output for one image of ``image_size`` (a dry run)."""
    was_training = backbone.training
    backbone.eval()
    with paddle.no_grad():
        out = backbone(paddle.zeros([1, 3, image_size, image_size]))
    if was_training:
        backbone.train()
    return int(out.reshape([1, -1]).shape[1])
