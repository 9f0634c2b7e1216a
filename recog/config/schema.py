"""Structured configs of recog's own sections (data, trainer, eval, export, predict, index, mlflow,
sweep, paths, launcher): their keys, types, defaults and value ranges live here only, so a misspelt key,
a wrongly typed value or one out of range fails at composition (the ranges: ``Range``, given with
``ranged(...)`` beside the field and checked by ``recog.config.compose.check_values``).

The components (backbone, neck, head, loss, dataset, optimizer, scheduler, postprocess) have no dataclass: each
is a yaml in ``conf/<group>/`` with a ``_target_``, and its keys are checked against the
constructor's signature (``recog.config.components``, ``recog.registry``).
"""

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass(frozen=True)
class Range:
    """The values a field accepts beyond its type; null and unset (``???``) values are not checked.

    Numbers: ``low`` / ``high`` inclusive, ``above`` exclusive (NaN and infinities are refused where
    a bound is given). Lists: ``length`` items exactly or ``nonempty``, and every item within the
    bounds (``item`` names one in the message, e.g. "K"). Strings: ``nonempty`` (not blank) and at
    most ``max_length`` characters. ``text`` says the range in words (default: from the bounds),
    ``note`` what the value means; both appear in the message.
    """

    low: float | None = None
    high: float | None = None
    above: float | None = None
    length: int | None = None
    nonempty: bool = False
    max_length: int | None = None
    item: str = "value"
    text: str = ""
    note: str = ""

    def problem(self, key: str, value) -> str | None:
        """The message for ``key=value`` outside the range, or None."""
        note = f" ({self.note})" if self.note else ""
        if value is None:
            return None
        if isinstance(value, str):
            if self.nonempty and not value.strip():
                return f"{key} must not be empty{note}"
            if self.max_length is not None and len(value) > self.max_length:
                return f"{key} is {len(value)} characters long; at most {self.max_length} are allowed{note}"
            return None
        if isinstance(value, (list, tuple)) or hasattr(value, "__len__"):
            values = list(value)
            if self.nonempty and not values:
                return f"{key} needs at least one {self.item}{note}"
            if self.length is not None and len(values) != self.length:
                return f"{key} needs {self.length} values{note}, got {values}"
            if any(not self.within(v) for v in values):
                return f"{key}: every {self.item} must be {self.words()}{note}, got {values}"
            return None
        return None if self.within(value) else f"{key} must be {self.words()}{note}, got {value}"

    def within(self, value) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return all(bound is None for bound in (self.low, self.high, self.above))
        return (
            (self.low is None or value >= self.low)
            and (self.high is None or value <= self.high)
            and (self.above is None or value > self.above)
        )

    def words(self) -> str:
        if self.text:
            return self.text
        low, high, above = (f"{b:g}" if isinstance(b, float) else b for b in (self.low, self.high, self.above))
        if self.low is not None and self.high is not None:
            return f"in {low}..{high}"
        if self.low is not None:
            return f"at least {low}"
        if self.above is not None:
            return f"above {above}"
        return f"at most {high}"


def ranged(default=MISSING, *, factory=None, **bounds):
    """A dataclass field with its ``Range`` (``Range``'s arguments) in the field's metadata."""
    if factory is not None:
        return field(default_factory=factory, metadata={"range": Range(**bounds)})
    return field(default=default, metadata={"range": Range(**bounds)})


# MLflow's own limits on names
MLFLOW_MAX_EXPERIMENT_NAME = 500  # mlflow.utils.validation.MAX_EXPERIMENT_NAME_LENGTH (MLflow 3)
MLFLOW_MAX_RUN_NAME = 250  # the runs.name column of MLflow's SQL stores


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
    image_size: int = ranged(224, low=1, high=8192, note="pixels a side")
    batch_size: int = ranged(64, low=1)
    samples_per_class: int = ranged(4, low=1)
    eval_batch_size: int = ranged(128, low=1)
    num_workers: int = ranged(2, low=0, text="0 (load in the main process) or more")
    mean: list[float] = ranged(factory=lambda: [0.485, 0.456, 0.406], length=3, note="R, G, B")
    std: list[float] = ranged(factory=lambda: [0.229, 0.224, 0.225], length=3, above=0.0, note="R, G, B")
    on_bad_image: OnBadImage = OnBadImage.skip
    # Larger images are refused (as bad images) before decoding when the header tells the size
    # (PNG, JPEG, GIF, BMP, WebP, TIFF), else after: decompression bombs. None: OpenCV's own 2**30.
    max_image_pixels: int | None = ranged(100_000_000, low=1, note="null: no limit")
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class TrainerConfig:
    epochs: int = ranged(10, low=1, note="epochs to train")
    device: Device = Device.auto
    eval_every: int = ranged(1, low=1, note="evaluate every N epochs; the last epoch is always evaluated")
    log_every: int = ranged(10, low=1, note="steps between metric logs")
    grad_clip: float | None = ranged(None, above=0.0, note="the global gradient-norm clip; null: no clipping")
    # A cap on the batches of an epoch (smoke tests); None: all
    steps_per_epoch: int | None = ranged(None, low=1, note="a cap on the batches of an epoch; null: all")
    amp: AmpLevel | None = None  # mixed precision on the GPU: O1 or O2; None: float32
    amp_dtype: AmpDtype = AmpDtype.float16
    sync_bn: bool = False  # BatchNorm statistics over all data-parallel ranks (GPU, >1 process)
    freeze_bn: bool = False  # BatchNorm in eval mode while training: running statistics, not updated
    # A NaN / Inf loss or gradient stops the run naming the step and the loss term; true skips such
    # steps instead (no update), counted in the metric skipped_steps.
    skip_nonfinite: bool = False
    # The eval metric that picks best_model/ (higher is better): recall_at_K, precision_at_K, mAP, mINP
    monitor: str = "recall_at_1"
    # The training step's strategy (recog/training/strategy.py), each auto | true | false. compile: forward +
    # loss (+ backward) as paddle.jit.to_static programs; channels_last: PIR's NHWC layout pass (GPU with
    # amp, compiled). auto: dygraph, no faster mode was measured.
    compile: str = "auto"
    channels_last: str = "auto"
    fused_finite_check: bool = True  # one kernel checks all gradients for NaN / Inf (false: one per tensor)
    # Depthwise convolutions on small maps as one batched matrix product (recog/training/depthwise.py),
    # auto | true | false; auto: on for the CPU (Paddle's kernel is slow there on small maps), off on GPUs.
    depthwise_matmul: str = "auto"
    # An exponential moving average of the weights (recog/training/ema.py) is what evals see and
    # best_model/ holds; its decay per step, e.g. 0.999. None: off (the raw weights)
    ema_decay: float | None = ranged(
        None, above=0.0, high=0.99999, text="above 0 and below 1", note="the EMA's decay per step; null: off"
    )
    # A JSON file rank 0 rewrites at the loop's fixed points (start, each step, eval, epoch end, stop, end):
    # where the run is, for a program watching it (recog/training/callbacks/progress.py); null: none
    progress_file: str | None = None


class EvalEngine(str, Enum):
    """What computes the eval features: the dygraph model, or a Paddle Inference predictor of it
    (oneDNN on the CPU); ``auto`` picks the predictor on the CPU for large enough eval sets
    (see recog/evaluation/evaluator.py)."""

    auto = "auto"
    dygraph = "dygraph"
    predictor = "predictor"


@dataclass
class EvalConfig:
    recall_at: list[int] = ranged(
        factory=lambda: [1, 5, 10], nonempty=True, low=1, item="K", note="Recall@K counts the top K results"
    )
    normalize: bool = True  # L2-normalise features: inner product = cosine
    binarize: Binarize | None = None  # rank binary codes by Hamming distance instead
    engine: EvalEngine = EvalEngine.auto
    # engine=auto: eval sets (per process) of fewer megapixels (images x data.image_size^2) stay on dygraph
    predictor_min_megapixels: float = ranged(1.0, low=0.0, note="megapixels")
    # The decision threshold each eval calibrates (and an export carries) accepts this fraction of
    # different-class pairs (the false-match rate); at most 0.01
    target_fmr: float = 1e-3
    # Post-processing (flip, query expansion, re-ranking) is the postprocess group: postprocess=flip, ...


@dataclass
class ExportConfig:
    """``stage=export``: a Paddle inference model (and optionally ONNX) of ``model_path``."""

    output_dir: str | None = None  # None: <model_path>/../export (beside best_model/)
    onnx: bool = False  # also write model.onnx (paddle2onnx), checked with onnxruntime
    opset_version: int = ranged(13, low=7, note="the ONNX opset paddle2onnx is asked for")
    # max abs feature difference allowed vs the dygraph model
    tolerance: float = ranged(1e-4, above=0.0, note="the largest feature difference the export check allows")
    # eval-split images in the self-check (random input without a dataset)
    check_images: int = ranged(16, low=1, note="images in the export's self-check")
    cpu_onednn: OneDNNMode = OneDNNMode.auto  # recorded in preprocess.json; auto probes full, then no_placement
    after_train: bool = True  # stage=train exports best_model/ into <run>/export and logs it as the MLflow Model
    # threshold.json to ship (a file, or a stage=eval run dir holding one); None: the threshold of the
    # best model's own eval (best_model/state.json), if it has one
    threshold: str | None = None


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
    batch_size: int = ranged(32, low=1, note="images per predictor batch")
    top_k: int = ranged(5, low=1, note="gallery results per query")
    picture_queries: int = ranged(8, low=0, note="rows of retrieval.png; 0: no picture")
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
    rebuild_fraction: float = ranged(
        0.2, low=0.0, high=1.0, note="share of deleted entries"
    )  # hnsw: rebuild the graph once more than this share is deleted
    log_model: bool = True  # log export + index as the MLflow Model of this stage's run


@dataclass
class MlflowConfig:
    enabled: bool = True
    tracking_uri: str | None = None  # None: sqlite:///<paths.output_root>/mlflow.db
    experiment_name: str = ranged("recog", nonempty=True, max_length=MLFLOW_MAX_EXPERIMENT_NAME, note="MLflow's limit")
    # None: backbone/neck/head/loss; a sweep job's run adds "#<job> <swept values>"
    run_name: str | None = ranged(None, max_length=MLFLOW_MAX_RUN_NAME, note="MLflow's limit")
    # An unreachable store at start: true stops with a message (exit 2); false goes on and keeps
    # the run's MLflow calls in <run dir>/mlflow_pending.jsonl (scripts/replay_mlflow.py).
    required: bool = True
    # HTTP retries per call (MLflow's default, 7, stalls for minutes)
    request_retries: int = ranged(2, low=0, note="HTTP retries per MLflow call")
    request_timeout: int = ranged(30, low=1, note="seconds per MLflow HTTP request")
    register_best: bool = False  # register export/ (or best_model/) of the run, of a sweep's best run
    # Copy best_model/ and export/ into the run's artifacts (for the default model 2 x 33 MB beside the
    # MLflow Model's own copy of the export); false: the MLflow Model and the small files only.
    log_model_files: bool = True
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

    # processes (ranks) on this node: one per GPU, or CPU processes
    nproc_per_node: int = ranged(1, low=1, note="processes on this node")
    # nodes; above 1 needs master and the same hydra.run.dir on every node
    nnodes: int = ranged(1, low=1, note="nodes")
    master: str | None = None  # host:port of the rendezvous (paddle.distributed.launch --master)
    # this node's rank (--rank), below nnodes; None: assigned by the master
    node_rank: int | None = ranged(None, low=0, note="this node's rank; null: assigned by the master")


@dataclass
class RecogConfig:
    stage: Stage = Stage.train
    seed: int = ranged(0, low=0, high=2**32 - 1, note="numpy's global seed")
    model_path: str | None = None  # a best_model/ or checkpoint dir, for eval and export
    resume: bool = False
    backbone: Any = MISSING
    neck: Any = None
    head: Any = None
    loss: Any = MISSING
    dataset: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    postprocess: Any = None  # named post-processing steps (conf/postprocess/); none: {}
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
    conf/config.yaml), once per process (again if the store was emptied)."""
    store = ConfigStore.instance()
    if "recog_schema.yaml" not in store.list(""):
        store.store(name="recog_schema", node=RecogConfig)
