"""Structured configs: the typed schema behind every YAML file in ``conf/``.

Each group option's YAML starts from one of these dataclasses (``defaults: [/schema/...@_here_]``),
so a misspelt key or a wrongly typed value fails at composition, before any work starts.
Field names follow PaddleClas where it has them (``embedding_size``, ``class_num``, ``margin``,
``scale``, ``easy_margin``, ``weight``).
"""

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class Stage(str, Enum):
    train = "train"
    eval = "eval"
    export = "export"
    predict = "predict"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"


class LossInput(str, Enum):
    """Which model output a loss term reads."""

    logits = "logits"
    features = "features"
    backbone = "backbone"


class Binarize(str, Enum):
    """How real features become binary codes: ``sign`` (x > 0) or ``round`` (x >= 0.5, for [0, 1])."""

    sign = "sign"
    round = "round"


class AmpLevel(str, Enum):
    """Mixed precision (GPU only): ``O1`` casts per op (white/black lists), ``O2`` casts the model."""

    O1 = "O1"
    O2 = "O2"


class AmpDtype(str, Enum):
    float16 = "float16"  # with dynamic loss scaling (GradScaler)
    bfloat16 = "bfloat16"  # no loss scaling needed


class OneDNNMode(str, Enum):
    """How an export's CPU predictor uses oneDNN (see ``recog.inference.predictor.ONEDNN_MODES``)."""

    auto = "auto"  # the fastest mode that reproduces the model, probed in a child process at export
    full = "full"
    no_placement = "no_placement"
    off = "off"


# ---- backbone (stop_layer and pretrained are handled by build_model, not the class) ----------
@dataclass
class PPLCNetConfig:
    _target_: str = "recog.models.backbones.PPLCNet"
    scale: float = 2.5
    dropout_prob: float = 0.2
    stop_layer: Optional[str] = "flatten"
    pretrained: Optional[str] = None  # a PaddleClas .pdparams or a .safetensors file


@dataclass
class ResNetVdConfig:
    _target_: str = "recog.models.backbones.ResNetVd"
    depth: int = 50
    stop_layer: Optional[str] = "flatten"
    pretrained: Optional[str] = None


@dataclass
class VisionResNetConfig:
    _target_: str = "recog.models.backbones.VisionResNet"
    depth: int = 50
    stop_layer: Optional[str] = "flatten"
    pretrained: Optional[str] = None


@dataclass
class VisionMobileNetV3Config:
    _target_: str = "recog.models.backbones.VisionMobileNetV3"
    size: str = "large"
    scale: float = 1.0
    stop_layer: Optional[str] = "flatten"
    pretrained: Optional[str] = None


# ---- neck -------------------------------------------------------------------------------------
@dataclass
class FCNeckConfig:
    _target_: str = "recog.models.necks.FCNeck"
    embedding_size: int = 512


@dataclass
class BNNeckConfig:
    _target_: str = "recog.models.necks.BNNeck"
    embedding_size: Optional[int] = None  # None: the backbone width; else an FC first


@dataclass
class TanhNeckConfig:
    _target_: str = "recog.models.necks.TanhNeck"
    embedding_size: int = 48  # code length in bits


@dataclass
class FPNNeckConfig:
    _target_: str = "recog.models.necks.FPNNeck"
    embedding_size: int = 512
    fpn_channels: int = 256
    num_levels: int = 3  # the backbone's last stages fed to the pyramid


# ---- head (class_num None: the number of training classes) ------------------------------------
@dataclass
class FCHeadConfig:
    _target_: str = "recog.models.heads.FCHead"
    class_num: Optional[int] = None


@dataclass
class ArcMarginConfig:
    _target_: str = "recog.models.heads.ArcMargin"
    class_num: Optional[int] = None
    margin: float = 0.2
    scale: float = 30.0
    easy_margin: bool = False


@dataclass
class CosMarginConfig:
    _target_: str = "recog.models.heads.CosMargin"
    class_num: Optional[int] = None
    margin: float = 0.15
    scale: float = 64.0


@dataclass
class CircleMarginConfig:
    _target_: str = "recog.models.heads.CircleMargin"
    class_num: Optional[int] = None
    margin: float = 0.25
    scale: float = 256.0


# ---- loss terms: weight and input (the model output read) are handled by build_loss -----------
# class_num / num_classes / feat_dim left None are filled in: training classes, feature width.
@dataclass
class CELossConfig:
    _target_: str = "recog.losses.CELoss"
    weight: float = 1.0
    input: LossInput = LossInput.logits
    epsilon: Optional[float] = None


@dataclass
class TripletLossV2Config:
    _target_: str = "recog.losses.TripletLossV2"
    weight: float = 1.0
    input: LossInput = LossInput.features
    margin: float = 0.5
    normalize_feature: bool = True


@dataclass
class TripletLossConfig:
    _target_: str = "recog.losses.TripletLoss"
    weight: float = 1.0
    input: LossInput = LossInput.features
    margin: float = 1.0


@dataclass
class TriHardLossConfig:
    _target_: str = "recog.losses.TriHardLoss"
    weight: float = 1.0
    input: LossInput = LossInput.features
    margin: float = 0.1


@dataclass
class CenterLossConfig:
    _target_: str = "recog.losses.CenterLoss"
    weight: float = 1.0
    input: LossInput = LossInput.features
    num_classes: Optional[int] = None
    feat_dim: Optional[int] = None


@dataclass
class SupConLossConfig:
    _target_: str = "recog.losses.SupConLoss"
    weight: float = 1.0
    input: LossInput = LossInput.features
    temperature: float = 0.07
    base_temperature: float = 0.07
    contrast_mode: str = "all"


@dataclass
class MSMLossConfig:
    _target_: str = "recog.losses.MSMLoss"
    weight: float = 1.0
    input: LossInput = LossInput.features
    margin: float = 0.1


@dataclass
class NpairsLossConfig:
    _target_: str = "recog.losses.NpairsLoss"
    weight: float = 1.0
    input: LossInput = LossInput.features
    reg_lambda: float = 0.01


@dataclass
class EmlLossConfig:
    _target_: str = "recog.losses.EmlLoss"
    weight: float = 1.0
    input: LossInput = LossInput.features
    beta: float = 100000.0


@dataclass
class PairwiseCosfaceConfig:
    _target_: str = "recog.losses.PairwiseCosface"
    weight: float = 1.0
    input: LossInput = LossInput.features
    margin: float = 0.35
    gamma: float = 64.0


@dataclass
class XBMConfig:
    _target_: str = "recog.losses.XBM"
    weight: float = 1.0
    input: LossInput = LossInput.features
    loss: Any = field(default_factory=lambda: {"_target_": "recog.losses.ContrastiveLoss", "margin": 0.5})
    memory_size: int = 8192
    feat_dim: Optional[int] = None
    start_iteration: int = 0
    memory_weight: float = 1.0


@dataclass
class DCHLossConfig:
    _target_: str = "recog.losses.DCHLoss"
    weight: float = 1.0
    input: LossInput = LossInput.features
    gamma: float = 20.0
    _lambda: float = 0.1
    class_num: Optional[int] = None


@dataclass
class DSHSDLossConfig:
    _target_: str = "recog.losses.DSHSDLoss"
    weight: float = 1.0
    input: LossInput = LossInput.features
    alpha: float = 0.05
    multi_label: bool = False


@dataclass
class LCDSHLossConfig:
    _target_: str = "recog.losses.LCDSHLoss"
    weight: float = 1.0
    input: LossInput = LossInput.features
    class_num: Optional[int] = None
    _lambda: float = 3.0


# ---- dataset (each a loader returning RetrievalSplits) ----------------------------------------
@dataclass
class DigitsConfig:
    _target_: str = "recog.data.digits.load_digits"
    root: str = "${paths.output_root}/data/digits"
    mirror_invariant: bool = False


@dataclass
class SOPConfig:
    _target_: str = "recog.data.sop.load_sop"
    root: str = MISSING
    train_file: str = "Ebay_train.txt"
    test_file: str = "Ebay_test.txt"
    mirror_invariant: bool = True


@dataclass
class ImageListConfig:
    _target_: str = "recog.data.lists.load_lists"
    root: str = MISSING
    train_list: str = MISSING
    query_list: str = MISSING
    gallery_list: Optional[str] = None  # None: query == gallery protocol
    mirror_invariant: bool = True


# ---- optimizer and learning-rate schedule -----------------------------------------------------
@dataclass
class MomentumConfig:
    _target_: str = "recog.optim.momentum"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False


@dataclass
class AdamWConfig:
    _target_: str = "recog.optim.adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.999


@dataclass
class WarmupCosineConfig:
    _target_: str = "recog.optim.warmup_cosine"
    warmup_epochs: float = 1.0
    warmup_start_lr: float = 0.0
    eta_min: float = 0.0


@dataclass
class MultiStepConfig:
    _target_: str = "recog.optim.multi_step"
    milestones: List[int] = field(default_factory=lambda: [30, 60, 90])
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    warmup_start_lr: float = 0.0


# ---- everything else --------------------------------------------------------------------------
class OnBadImage(str, Enum):
    """What a run does with an image it cannot use (missing, empty, truncated, not an image, too large)."""

    skip = "skip"  # warn, list it in <run dir>/bad_images.tsv; training uses another image of its class
    fail = "fail"  # stop at once with the path (exit 2)


@dataclass
class DataConfig:
    image_size: int = 224
    batch_size: int = 64
    samples_per_class: int = 4
    eval_batch_size: int = 128
    num_workers: int = 2
    mean: List[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: List[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    on_bad_image: OnBadImage = OnBadImage.skip
    # Larger images are refused (as bad images) before decoding when the header tells the size
    # (PNG, JPEG, GIF, BMP, WebP, TIFF), else after: decompression bombs. None: OpenCV's own 2**30.
    max_image_pixels: Optional[int] = 100_000_000


@dataclass
class TrainerConfig:
    epochs: int = 10
    device: Device = Device.auto
    eval_every: int = 1  # epochs; the last epoch is always evaluated
    log_every: int = 10  # steps between metric logs
    grad_clip: Optional[float] = None  # global-norm clip
    steps_per_epoch: Optional[int] = None  # cap on batches per epoch (smoke tests); None: all
    amp: Optional[AmpLevel] = None  # mixed precision on the GPU: O1 or O2; None: float32
    amp_dtype: AmpDtype = AmpDtype.float16
    sync_bn: bool = False  # BatchNorm statistics over all data-parallel ranks (GPU, >1 process)
    freeze_bn: bool = False  # BatchNorm in eval mode while training: running statistics, not updated
    # A NaN / Inf loss or gradient stops the run naming the step and the loss term; true skips such
    # steps instead (no update), counted in the metric skipped_steps.
    skip_nonfinite: bool = False


class EvalEngine(str, Enum):
    """What computes the eval features: the dygraph model, or a Paddle Inference predictor of it
    (oneDNN on the CPU); ``auto`` picks the predictor on the CPU for large enough eval sets
    (see recog/stages/evaluate.py)."""

    auto = "auto"
    dygraph = "dygraph"
    predictor = "predictor"


@dataclass
class EvalConfig:
    recall_at: List[int] = field(default_factory=lambda: [1, 5, 10])
    normalize: bool = True  # L2-normalise features: inner product = cosine
    binarize: Optional[Binarize] = None  # rank binary codes by Hamming distance instead
    engine: EvalEngine = EvalEngine.auto
    # engine=auto: eval sets (per process) of fewer megapixels (images x data.image_size^2) stay on dygraph
    predictor_min_megapixels: float = 1.0


@dataclass
class ExportConfig:
    """``stage=export``: a Paddle inference model (and optionally ONNX) of ``model_path``."""

    output_dir: Optional[str] = None  # None: <model_path>/../export (beside best_model/)
    onnx: bool = False  # also write model.onnx (paddle2onnx), checked with onnxruntime
    opset_version: int = 13  # ONNX opset requested from paddle2onnx
    tolerance: float = 1e-4  # max abs feature difference allowed vs the dygraph model
    check_images: int = 16  # eval-split images in the self-check (random input without a dataset)
    cpu_onednn: OneDNNMode = OneDNNMode.auto  # recorded in preprocess.json; auto probes full, then no_placement
    after_train: bool = True  # stage=train exports best_model/ into <run>/export and logs it as the MLflow Model


class IndexKind(str, Enum):
    """Gallery index: ``flat`` exact search; ``ivf`` / ``hnsw`` approximate, for large galleries."""

    flat = "flat"
    ivf = "ivf"
    hnsw = "hnsw"


@dataclass
class PredictConfig:
    """``stage=predict``: features of images with an export, and optionally a gallery search."""

    model_dir: Optional[str] = None  # an export directory (stage=export)
    input: Optional[str] = None  # a folder of images or a list file of `path [label]` lines
    gallery: Optional[str] = None  # the same, searched by every input image
    index_dir: Optional[str] = None  # None: <output>/gallery; an existing index is extended
    index: IndexKind = IndexKind.flat
    output_dir: Optional[str] = None  # None: the run directory
    batch_size: int = 32
    top_k: int = 5
    picture_queries: int = 8  # rows of retrieval.png (0: no picture)


@dataclass
class MlflowConfig:
    enabled: bool = True
    tracking_uri: Optional[str] = None  # None: sqlite:///<paths.output_root>/mlflow.db
    experiment_name: str = "recog"
    run_name: Optional[str] = None  # None: backbone/neck/head/loss; a sweep job's run adds "#<job> <swept values>"
    # An unreachable store at start: true stops with a message (exit 2); false goes on and keeps
    # the run's MLflow calls in <run dir>/mlflow_pending.jsonl (scripts/replay_mlflow.py).
    required: bool = True
    request_retries: int = 2  # HTTP retries per call (MLflow's default, 7, stalls for minutes)
    request_timeout: int = 30  # seconds per HTTP request
    register_best: bool = False  # register export/ (or best_model/) of the run, of a sweep's best run
    model_name: str = "recog"  # the registered model's name


@dataclass
class SweepConfig:
    """``run.py -m``: what a sweep job returns to the sweeper and the parent run ranks by."""

    objective: str = "recall_at_1"  # an eval metric, maximised: recall_at_K, precision_at_K, mAP, mINP


@dataclass
class PathsConfig:
    output_root: str = "outputs"


@dataclass
class LauncherConfig:
    """Data parallelism: ``run.py`` re-runs itself under ``paddle.distributed.launch`` when
    ``nproc_per_node`` or ``nnodes`` is above 1 (see recog/distributed/launch.py)."""

    nproc_per_node: int = 1  # processes (ranks) on this node: one per GPU, or CPU processes
    nnodes: int = 1  # nodes; above 1 needs master and the same hydra.run.dir on every node
    master: Optional[str] = None  # host:port of the rendezvous (paddle.distributed.launch --master)
    node_rank: Optional[int] = None  # this node's rank (--rank); None: assigned by the master


@dataclass
class RecogConfig:
    stage: Stage = Stage.train
    seed: int = 0
    model_path: Optional[str] = None  # a best_model/ or checkpoint dir, for eval and export
    resume: bool = False
    backbone: Any = MISSING
    neck: Any = None
    head: Any = None
    loss: Any = MISSING
    dataset: Any = MISSING
    optimizer: Any = MISSING
    lr: Any = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)


SCHEMAS = {
    "backbone": {"pplcnet": PPLCNetConfig, "resnet_vd": ResNetVdConfig, "vision_resnet": VisionResNetConfig,
                 "vision_mobilenetv3": VisionMobileNetV3Config},
    "neck": {"fc": FCNeckConfig, "bnneck": BNNeckConfig, "tanh": TanhNeckConfig, "fpn": FPNNeckConfig},
    "head": {"fc": FCHeadConfig, "arcmargin": ArcMarginConfig, "cosmargin": CosMarginConfig,
             "circlemargin": CircleMarginConfig},
    "loss": {"ce": CELossConfig, "triplet_v2": TripletLossV2Config, "triplet": TripletLossConfig,
             "trihard": TriHardLossConfig, "center": CenterLossConfig, "supcon": SupConLossConfig,
             "msm": MSMLossConfig, "npairs": NpairsLossConfig, "eml": EmlLossConfig,
             "pairwise_cosface": PairwiseCosfaceConfig, "xbm": XBMConfig, "dch": DCHLossConfig,
             "dshsd": DSHSDLossConfig, "lcdsh": LCDSHLossConfig},
    "dataset": {"digits": DigitsConfig, "sop": SOPConfig, "image_list": ImageListConfig},
    "optimizer": {"momentum": MomentumConfig, "adamw": AdamWConfig},
    "lr": {"warmup_cosine": WarmupCosineConfig, "multi_step": MultiStepConfig},
}


def register_schemas() -> None:
    """Store the schemas in Hydra's ConfigStore under ``schema/<group>/<name>``."""
    store = ConfigStore.instance()
    store.store(name="recog_schema", node=RecogConfig)
    for group, options in SCHEMAS.items():
        for name, node in options.items():
            store.store(group=f"schema/{group}", name=name, node=node)
