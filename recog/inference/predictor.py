"""Run an exported model (``stage=export``) with the Paddle Inference predictor.

An export directory holds::

    inference.json, inference.pdiparams   the Paddle inference model: images [N, 3, H, W] -> features [N, D]
    preprocess.json                       how images must be prepared, and what the output is
    export_report.json                    the export's self-check (feature differences vs the trained model)
    model.onnx                            the same model in ONNX, with export.onnx=true
    manifest.json                         size and SHA-256 of every file above (recog.utils.manifest)

Loading verifies every file against ``manifest.json`` first: a missing, truncated or altered file
is an ``IntegrityError`` naming it (never features from damaged weights); ``preprocess.json``'s
fields are type-checked. An export without a manifest (older recog) loads with a warning.

Typical use::

    from recog.data import decode_image
    from recog.inference import ExportedModel, preprocess_image

    model = ExportedModel("outputs/runs/<run>/export")
    batch = np.stack([preprocess_image(decode_image(p), model.preprocess) for p in paths])
    features = model.predict(batch)          # [N, D] float32 (L2-normalised if preprocess["normalize"])

The predictor runs with oneDNN on the CPU (about ten times faster than the dygraph model there;
``preprocess["runtime"]["cpu_onednn"]`` says how, see ``ONEDNN_MODES``) or on the GPU when Paddle
has CUDA and sees one. One ``ExportedModel`` must not be used from several threads at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from recog.data.transforms import build_transform
from recog.errors import ConfigError, DataError, RecogError
from recog.utils import manifest
from recog.utils.manifest import IntegrityError

MODEL_FILE, PARAMS_FILE = "inference.json", "inference.pdiparams"
PREPROCESS_FILE, REPORT_FILE, ONNX_FILE = "preprocess.json", "export_report.json", "model.onnx"
FORMAT, FORMAT_VERSION = "recog-export", 1
# How the CPU predictor uses oneDNN: "full" (every op oneDNN supports, the fastest), "no_placement"
# (only oneDNN's fused conv / matmul kernels: avoids Paddle 3.3's oneDNN bugs, e.g. a crash in batch
# norm without affine parameters, as BNNeck's, or nearest upsampling, as FPN's) or "off". The export
# stage records the fastest mode that reproduces the model on this machine.
ONEDNN_MODES = ("full", "no_placement", "off")
MANIFEST_KIND = "export"
# preprocess.json: the fields recog reads back and their JSON types (None: null allowed).
PREPROCESS_FIELDS = {
    "format": str,
    "format_version": int,
    "image_size": int,
    "mean": list,
    "std": list,
    "feature_dim": int,
    "normalize": bool,
    "binarize": (str, None),
    "runtime": (dict, None),
    "files": (dict, None),
    "mlflow_run_id": (str, None),
}
BINARIZE_METHODS = ("sign", "round")
MAX_IMAGE_SIZE = 8192  # as data.image_size (recog.config.compose)
MEAN_BOUND, STD_RANGE = 1e3, (1e-3, 1e3)  # per RGB channel, on pixels scaled to 0..1

EXPORT_CONTENTS = (
    f"an export directory (written by `python run.py stage=export model_path=<run>/best_model`) "
    f"holds {MODEL_FILE} and {PARAMS_FILE} (the Paddle inference model), {PREPROCESS_FILE} "
    f"(input preprocessing and output description) and {REPORT_FILE}, plus {ONNX_FILE} with "
    f"export.onnx=true"
)


def load_preprocess(model_dir: str | Path, verify: bool = True) -> dict[str, Any]:
    """The parsed, type-checked ``preprocess.json`` of an export directory; ``RecogError`` if it is
    not an export, ``IntegrityError`` if a file differs from ``manifest.json`` (``verify``: every
    file is checked, else only ``preprocess.json``)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise RecogError(f"{model_dir} is not a directory: expected an export directory; {EXPORT_CONTENTS}")
    has_manifest = (model_dir / manifest.MANIFEST_FILE).is_file()
    missing = [name for name in (MODEL_FILE, PARAMS_FILE, PREPROCESS_FILE) if not (model_dir / name).is_file()]
    if missing and not has_manifest:
        hint = ""
        if (model_dir / "model.safetensors").is_file():
            hint = (
                f" ({model_dir} looks like a trained model: export it first with stage=export model_path={model_dir})"
            )
        raise RecogError(f"{model_dir} is not a recog export: missing {', '.join(missing)}{hint}; {EXPORT_CONTENTS}")
    if verify:
        manifest.verify(model_dir, MANIFEST_KIND, "export", required=(MODEL_FILE, PARAMS_FILE, PREPROCESS_FILE))
    else:
        manifest.check_file(model_dir, PREPROCESS_FILE, MANIFEST_KIND, "export")
    path = model_dir / PREPROCESS_FILE
    preprocess = manifest.read_json(path, "export")
    required = ("format", "image_size", "mean", "std", "feature_dim", "normalize")
    absent = [key for key in required if key not in preprocess] if isinstance(preprocess, dict) else list(required)
    if absent:
        raise RecogError(
            f"{path} is not a recog export description (format {FORMAT!r} with {', '.join(required)}); "
            f"missing: {', '.join(absent)}"
        )
    manifest.check_fields(path, preprocess, PREPROCESS_FIELDS, required=required)
    if preprocess["format"] != FORMAT:
        raise RecogError(
            f"{path} is not a recog export description (format {preprocess['format']!r}, expected {FORMAT!r})"
        )
    if preprocess.get("format_version", 0) > FORMAT_VERSION:
        raise RecogError(
            f"{model_dir} was exported by a newer recog (format version "
            f"{preprocess['format_version']} > {FORMAT_VERSION}): update recog to load it"
        )
    _check_values(path, preprocess)
    return preprocess


def _check_values(path: Path, preprocess: dict[str, Any]) -> None:
    """Ranges and element types of ``preprocess.json``'s fields (their JSON types are checked already)."""

    def bad(key: str, expected: str):
        return IntegrityError(
            f"{path}: {key} must be {expected}, got {json.dumps(preprocess.get(key))[:80]}; export the model again"
        )

    if not 1 <= preprocess["image_size"] <= MAX_IMAGE_SIZE:
        raise bad("image_size", f"a whole number in 1..{MAX_IMAGE_SIZE} (pixels a side)")
    shape = (preprocess.get("input") or {}).get("shape") if isinstance(preprocess.get("input"), dict) else None
    if shape is not None and (not isinstance(shape, list) or shape[2:] != [preprocess["image_size"]] * 2):
        raise bad("input", f"an input of shape [-1, 3, {preprocess['image_size']}, {preprocess['image_size']}]")
    if not 1 <= preprocess["feature_dim"] <= 2**31 - 1:
        raise bad("feature_dim", "a positive integer")
    for key in ("mean", "std"):
        values = preprocess[key]
        if len(values) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise bad(key, "a list of 3 numbers (R, G, B)")
    # Pixels are scaled to [0, 1] first: (x - mean) / std stays finite in float32 within these bounds.
    if not all(-MEAN_BOUND <= v <= MEAN_BOUND for v in preprocess["mean"]):  # also refuses nan
        raise bad("mean", f"3 finite numbers in -{MEAN_BOUND:g}..{MEAN_BOUND:g} (pixels scaled to 0..1)")
    if not all(STD_RANGE[0] <= v <= STD_RANGE[1] for v in preprocess["std"]):
        raise bad("std", f"3 numbers in {STD_RANGE[0]:g}..{STD_RANGE[1]:g} (pixels scaled to 0..1)")
    if preprocess.get("binarize") not in (None, *BINARIZE_METHODS):
        raise bad("binarize", f"null or one of {', '.join(BINARIZE_METHODS)}")
    onednn = (preprocess.get("runtime") or {}).get("cpu_onednn", ONEDNN_MODES[0])
    if onednn not in ONEDNN_MODES:
        raise IntegrityError(
            f"{path}: runtime.cpu_onednn must be one of {', '.join(ONEDNN_MODES)}, got "
            f"{json.dumps(onednn)[:60]}; export the model again"
        )


def preprocess_image(image: np.ndarray, preprocess: Mapping[str, Any] | ExportedModel) -> np.ndarray:
    """``[H, W, 3] uint8 RGB`` (any size) -> ``[3, S, S] float32``, exactly as the export expects.

    Uses the eval transform of training (``recog.data.build_transform(train=False)``) built from
    the recorded ``image_size``, ``mean`` and ``std``: bilinear resize to ``S x S`` whatever the
    input size, scale to [0, 1], ``(x - mean) / std`` per RGB channel, HWC -> CHW. Grayscale
    ``[H, W]`` / ``[H, W, 1]`` images are repeated to 3 channels. Images read with OpenCV are BGR:
    use ``recog.data.decode_image(path)``, which returns RGB.
    """
    if isinstance(preprocess, ExportedModel):
        preprocess = preprocess.preprocess
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image (0-255), got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise ValueError(f"expected an [H, W, 3] RGB image, got shape {tuple(image.shape)}")
    transform = build_transform(
        preprocess["image_size"], preprocess["mean"], preprocess["std"], train=False, hflip=False
    )
    return transform(image)


def resolve_device(device: str = "auto") -> str:
    """``auto``: ``gpu`` when this Paddle build has CUDA and sees a GPU, else ``cpu``."""
    import paddle

    device = getattr(device, "value", device)
    if device not in ("auto", "cpu", "gpu"):
        raise ConfigError(f"unknown device {device!r}: use auto, cpu or gpu")
    has_gpu = paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    if device == "gpu" and not has_gpu:
        raise ConfigError(
            "device=gpu, but "
            + (
                "this Paddle build has no CUDA support (install paddlepaddle-gpu: see the README)"
                if not paddle.is_compiled_with_cuda()
                else "no GPU is visible (check CUDA_VISIBLE_DEVICES)"
            )
        )
    if device == "auto":
        return "gpu" if has_gpu else "cpu"
    return device


class GraphPredictor:
    """The Paddle Inference predictor of ``inference.json`` / ``inference.pdiparams`` in ``model_dir``:
    ``run(batch [N, ...] float32) -> [N, D] float32``. No ``preprocess.json`` needed (see ``ExportedModel``).

    ``device``: ``cpu`` or ``gpu`` (see ``resolve_device``; ``gpu_id`` picks the GPU); ``threads``:
    CPU math threads; ``onednn``: one of ``ONEDNN_MODES`` (CPU only).
    """

    def __init__(
        self, model_dir: str | Path, device: str = "cpu", threads: int = 1, onednn: str = "full", gpu_id: int = 0
    ):
        from paddle import inference

        if onednn not in ONEDNN_MODES:
            raise ConfigError(f"unknown oneDNN mode {onednn!r}: use one of {', '.join(ONEDNN_MODES)}")
        model_dir = Path(model_dir)
        config = inference.Config(str(model_dir / MODEL_FILE), str(model_dir / PARAMS_FILE))
        if device == "gpu":
            config.enable_use_gpu(256, int(gpu_id))  # initial memory pool (MB), device id
        else:
            config.disable_gpu()
            if onednn == "off":
                config.disable_mkldnn()  # Paddle 3 turns oneDNN on by default
            else:
                config.enable_mkldnn()
                if onednn == "no_placement":
                    config.delete_pass("onednn_placement_pass")
            config.set_cpu_math_library_num_threads(int(threads))
        config.switch_ir_optim(True)
        config.disable_glog_info()
        self._predictor = inference.create_predictor(config)
        self._input = self._predictor.get_input_handle(self._predictor.get_input_names()[0])
        self._output = self._predictor.get_output_handle(self._predictor.get_output_names()[0])

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        self._input.reshape(list(batch.shape))
        self._input.copy_from_cpu(batch)
        self._predictor.run()
        return self._output.copy_to_cpu().astype(np.float32, copy=False)


class ExportedModel:
    """An export directory loaded into a Paddle Inference predictor.

    ``device``: ``auto`` (GPU when available), ``cpu`` (oneDNN) or ``gpu``. ``threads``: CPU math
    threads (default ``OMP_NUM_THREADS``, which recog sets to the number of cores). ``onednn``: one
    of ``ONEDNN_MODES``; default the mode the export recorded as working (``full`` if none).

    Attributes: ``preprocess`` (the parsed ``preprocess.json``), ``feature_dim``, ``image_size``,
    ``device``, ``model_dir``.
    """

    def __init__(
        self, model_dir: str | Path, device: str = "auto", threads: int | None = None, onednn: str | None = None
    ):
        self.model_dir = Path(model_dir)
        self.preprocess = load_preprocess(self.model_dir)
        self.device = resolve_device(device)
        if threads is None:
            threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
        if threads < 1:
            raise ConfigError(f"threads must be at least 1, got {threads}")
        self.threads = int(threads)
        if onednn is None:
            onednn = (self.preprocess.get("runtime") or {}).get("cpu_onednn", "full")
        if onednn not in ONEDNN_MODES:
            raise ConfigError(f"unknown oneDNN mode {onednn!r}: use one of {', '.join(ONEDNN_MODES)}")
        self.onednn = onednn if self.device == "cpu" else None
        self._graph = GraphPredictor(self.model_dir, self.device, self.threads, onednn)

    @property
    def feature_dim(self) -> int:
        return int(self.preprocess["feature_dim"])

    @property
    def image_size(self) -> int:
        return int(self.preprocess["image_size"])

    @property
    def binarize(self) -> str | None:
        """The binarisation method recorded at export (``sign`` / ``round``), or None."""
        return self.preprocess.get("binarize")

    def predict(self, images: np.ndarray, binarize: bool | None = None) -> np.ndarray:
        """``images [N, 3, S, S] float32`` (see ``preprocess_image``) -> features ``[N, D] float32``.

        The features are L2-normalised when ``preprocess["normalize"]`` is true. If the trained
        model ranked binary codes (``eval.binarize``), the export outputs the real-valued features
        and ``predict`` applies the recorded method, returning ``[N, D] uint8`` 0/1 bits as
        ``recog.metrics.binarize`` does; ``binarize=False`` returns the real features instead.
        """
        images = np.asarray(images)
        size = self.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(
                f"expected images of shape [N, 3, {size}, {size}] (NCHW, RGB, normalised; "
                f"see recog.inference.preprocess_image), got {tuple(images.shape)}"
            )
        if images.shape[0] == 0:
            features = np.zeros((0, self.feature_dim), np.float32)
        else:
            features = self._graph.run(images)
            finite = np.isfinite(features).all(axis=1)
            if not finite.all():  # never NaN features passed on as results
                raise DataError(
                    f"the model {self.model_dir} gave NaN or Inf features for {int((~finite).sum())} of "
                    f"{len(features)} images: the input is not finite or not preprocessed (preprocess_image), "
                    "or the model's weights are damaged; export the model again"
                )
        method = self.binarize if binarize is None or binarize else None
        if binarize and not method:
            raise ValueError(f"{self.model_dir} records no binarisation method (eval.binarize was not set)")
        if method:
            from recog.metrics import binarize as to_bits

            return to_bits(features, method)
        return features

    def predict_images(self, images, batch_size: int = 32, binarize: bool | None = None) -> np.ndarray:
        """Features ``[N, D]`` of ``[H, W, 3] uint8 RGB`` images of any size, ``batch_size`` at a time:
        a sequence of images or an ``[N, H, W, 3]`` array; one ``[H, W, 3]`` array is one image (N = 1)."""
        if isinstance(images, np.ndarray):
            if images.ndim == 3:
                images = images[None]
            elif images.ndim != 4:
                raise DataError(
                    f"predict_images takes images [H, W, 3], a list of them or an array [N, H, W, 3], "
                    f"got an array of shape {images.shape}"
                )
        images = list(images)
        out = [
            self.predict(
                np.stack([preprocess_image(image, self.preprocess) for image in images[i : i + batch_size]]),
                binarize=binarize,
            )
            for i in range(0, len(images), batch_size)
        ]
        if not out:
            return self.predict(np.zeros((0, 3, self.image_size, self.image_size), np.float32), binarize=binarize)
        return np.concatenate(out)

    def __repr__(self) -> str:
        onednn = f", onednn={self.onednn!r}" if self.onednn else ""
        return (
            f"ExportedModel({str(self.model_dir)!r}, device={self.device!r}{onednn}, "
            f"feature_dim={self.feature_dim}, image_size={self.image_size})"
        )
