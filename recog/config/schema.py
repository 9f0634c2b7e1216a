"""Structured configs of recog's own sections (data, trainer, eval, export, predict, index, mlflow,
sweep, paths, launcher): their keys, types and defaults live here only, so a misspelt key or a wrongly
typed value fails at composition.

The components (backbone, neck, head, loss, dataset, optimizer, scheduler) have no dataclass: each
is a yaml in ``conf/<group>/`` with a ``_target_``, and its keys are checked against the
constructor's signature (``recog.config.components``, ``recog.registry``).
"""

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class Stage(str, Enum):
    train = "train"
    eval = "eval"
    export = "export"
    predict = "predict"
    index = "index"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"


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


# ---- everything else --------------------------------------------------------------------------
class OnBadImage(str, Enum):
    """What a run does with an image it cannot use (missing, empty, truncated, not an image, too large)."""

    skip = "skip"  # warn, list it in <run dir>/bad_images.tsv; training uses another image of its class
    fail = "fail"  # stop at once with the path (exit 2)


@dataclass
class AugmentConfig:
    """``data.augment``: training augmentation, PaddleClas's operators and parameters (see
    ``recog.data.transforms.Augment``). The defaults add nothing to a flip."""

    random_resized_crop: bool = False  # RandCropImage: area U(crop_scale), aspect U(crop_ratio)
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333333])
    hflip: bool = True  # RandFlipImage p=0.5, only for mirror-invariant datasets
    pad_crop: int = 0  # Pad + RandCropImageV2: pad pixels per side, crop back at a random offset
    rotate_prob: float = 0.0  # RandomRotation: probability
    rotate_degrees: float = 90.0  # ... of an angle U(-d, d)
    color_jitter: list[float] = field(
        default_factory=lambda: [0.0, 0.0, 0.0, 0.0]
    )  # brightness contrast saturation hue
    erase_prob: float = 0.0  # RandomErasing (EPSILON): probability
    erase_area: list[float] = field(default_factory=lambda: [0.02, 0.4])  # sl, sh
    erase_ratio: float = 0.3  # r1: aspect in [r1, 1/r1]
    erase_value: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # fill, normalised units


@dataclass
class DataConfig:
    image_size: int = 224
    batch_size: int = 64
    samples_per_class: int = 4
    eval_batch_size: int = 128
    num_workers: int = 2
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    on_bad_image: OnBadImage = OnBadImage.skip
    # Larger images are refused (as bad images) before decoding when the header tells the size
    # (PNG, JPEG, GIF, BMP, WebP, TIFF), else after: decompression bombs. None: OpenCV's own 2**30.
    max_image_pixels: int | None = 100_000_000
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class TrainerConfig:
    epochs: int = 10
    device: Device = Device.auto
    eval_every: int = 1  # epochs; the last epoch is always evaluated
    log_every: int = 10  # steps between metric logs
    grad_clip: float | None = None  # global-norm clip
    steps_per_epoch: int | None = None  # cap on batches per epoch (smoke tests); None: all
    amp: AmpLevel | None = None  # mixed precision on the GPU: O1 or O2; None: float32
    amp_dtype: AmpDtype = AmpDtype.float16
    sync_bn: bool = False  # BatchNorm statistics over all data-parallel ranks (GPU, >1 process)
    freeze_bn: bool = False  # BatchNorm in eval mode while training: running statistics, not updated
    # A NaN / Inf loss or gradient stops the run naming the step and the loss term; true skips such
    # steps instead (no update), counted in the metric skipped_steps.
    skip_nonfinite: bool = False
    # The eval metric that picks best_model/ (higher is better): recall_at_K, precision_at_K, mAP, mINP
    monitor: str = "recall_at_1"
    # Faster training steps (recog/training/compile.py), each auto | true | false. compile: forward +
    # loss (+ backward) as paddle.jit.to_static programs; onednn: oneDNN kernels in them (CPU);
    # channels_last: PIR's NHWC layout pass (GPU with amp, compiled). auto: dygraph, no faster mode was measured.
    compile: str = "auto"
    onednn: str = "auto"
    channels_last: str = "auto"
    fused_finite_check: bool = True  # one kernel checks all gradients for NaN / Inf (false: one per tensor)
    # Depthwise convolutions on small maps as one batched matrix product (recog/training/depthwise.py),
    # auto | true | false; auto: on for the CPU (Paddle's kernel is slow there on small maps), off on GPUs.
    depthwise_matmul: str = "auto"


class EvalEngine(str, Enum):
    """What computes the eval features: the dygraph model, or a Paddle Inference predictor of it
    (oneDNN on the CPU); ``auto`` picks the predictor on the CPU for large enough eval sets
    (see recog/evaluation/evaluator.py)."""

    auto = "auto"
    dygraph = "dygraph"
    predictor = "predictor"


class Rerank(str, Enum):
    """Re-ranking of each query's top candidates: ``k_reciprocal`` (Zhong et al. 2017)."""

    k_reciprocal = "k_reciprocal"


@dataclass
class EvalConfig:
    recall_at: list[int] = field(default_factory=lambda: [1, 5, 10])
    normalize: bool = True  # L2-normalise features: inner product = cosine
    binarize: Binarize | None = None  # rank binary codes by Hamming distance instead
    engine: EvalEngine = EvalEngine.auto
    # engine=auto: eval sets (per process) of fewer megapixels (images x data.image_size^2) stay on dygraph
    predictor_min_megapixels: float = 1.0
    # Retrieval post-processing (recog.postprocess), all off by default; also used by every eval
    # during training and by stage=predict's gallery search.
    flip: bool = False  # features of each image and of its mirror, averaged (flip test-time augmentation)
    query_expansion: int = 0  # K: each query expanded with its top K gallery neighbours; 0: off
    qe_alpha: float = 0.0  # 0: average QE; > 0: alpha QE, neighbour i weighted by max(cos_i, 0) ** qe_alpha
    rerank: Rerank | None = None  # k_reciprocal: re-rank each query's top rerank_top_k candidates
    rerank_k1: int = 20  # k-reciprocal neighbourhood size (Zhong et al.'s k1)
    rerank_k2: int = 6  # neighbours whose sets are averaged (local query expansion, k2)
    rerank_lambda: float = 0.3  # weight of the original distance in the final one (lambda)
    rerank_top_k: int = 100  # candidates re-ranked per query; the rest keep their order


@dataclass
class ExportConfig:
    """``stage=export``: a Paddle inference model (and optionally ONNX) of ``model_path``."""

    output_dir: str | None = None  # None: <model_path>/../export (beside best_model/)
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

    model_dir: str | None = None  # an export directory (stage=export)
    input: str | None = None  # a folder of images or a list file of `path [label]` lines
    gallery: str | None = None  # the same, searched by every input image
    index_dir: str | None = None  # None: <output>/gallery; an existing index is extended
    index: IndexKind = IndexKind.flat
    output_dir: str | None = None  # None: the run directory
    batch_size: int = 32
    top_k: int = 5
    picture_queries: int = 8  # rows of retrieval.png (0: no picture)
    # The search model's (stage=index) decision threshold: a best match scoring at least this (inner
    # product; at most, for Hamming distances) gives its label, else "unknown". None: the export's
    # calibrated threshold.json; without one, every query gets its best match's label.
    threshold: float | None = None


@dataclass
class IndexConfig:
    """``stage=index``: build, edit or re-embed a saved gallery index; logged with the export as a search model."""

    model_dir: str | None = None  # the export (stage=export) that embeds the gallery
    gallery: str | None = None  # a list of `path label` lines, or a folder of <label>/ subfolders
    dir: str | None = None  # the index folder; None: <model_dir>/../index
    kind: IndexKind = IndexKind.flat  # for a new index
    add: str | None = None  # images to add (list or folder, as gallery): none may be indexed already
    remove: list[int] = field(default_factory=list)  # ids of entries to remove
    rebuild_fraction: float = 0.2  # hnsw: rebuild the graph once more than this share is deleted
    log_model: bool = True  # log export + index as the MLflow Model of this stage's run


@dataclass
class MlflowConfig:
    enabled: bool = True
    tracking_uri: str | None = None  # None: sqlite:///<paths.output_root>/mlflow.db
    experiment_name: str = "recog"
    run_name: str | None = None  # None: backbone/neck/head/loss; a sweep job's run adds "#<job> <swept values>"
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

    # An eval metric, maximised: recall_at_K, precision_at_K, mAP, mINP; by default the one that picks the best model
    objective: str = "${trainer.monitor}"


@dataclass
class PathsConfig:
    output_root: str = "outputs"


@dataclass
class LauncherConfig:
    """Data parallelism: ``run.py`` re-runs itself under ``paddle.distributed.launch`` when
    ``nproc_per_node`` or ``nnodes`` is above 1 (see recog/distributed/launch.py)."""

    nproc_per_node: int = 1  # processes (ranks) on this node: one per GPU, or CPU processes
    nnodes: int = 1  # nodes; above 1 needs master and the same hydra.run.dir on every node
    master: str | None = None  # host:port of the rendezvous (paddle.distributed.launch --master)
    node_rank: int | None = None  # this node's rank (--rank); None: assigned by the master


@dataclass
class RecogConfig:
    stage: Stage = Stage.train
    seed: int = 0
    model_path: str | None = None  # a best_model/ or checkpoint dir, for eval and export
    resume: bool = False
    backbone: Any = MISSING
    neck: Any = None
    head: Any = None
    loss: Any = MISSING
    dataset: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    # The one way around safe loading's registry check (recog.config.trusted): _target_s trusted
    # in a saved config although no yaml registers them. Read from this run's command line, never
    # from the saved file.
    trusted_targets: list[str] = field(default_factory=list)


def register_schemas() -> None:
    """Store the top-level schema in Hydra's ConfigStore (``recog_schema``, the first default of
    conf/config.yaml)."""
    ConfigStore.instance().store(name="recog_schema", node=RecogConfig)
