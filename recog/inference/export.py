"""Write an export directory from a trained ``RecModel`` and check it against the model.

(Over 300 lines: writing, self-checking, the oneDNN probe and the replace-only-an-export rule are
one transaction on one folder and read best together.)

``export_model`` is what ``stage=export`` runs after rebuilding the model; it works on any
``RecModel`` (``scripts/bench_predict.py`` uses it on random weights).

The exported graph is ``FeatureExtractor``: the model's ``features`` path only (the classification
head is dropped; no softmax), with the eval-time L2 normalisation baked in when it applies.
Models evaluated on binary codes (``eval.binarize``) export their real-valued features, without
normalisation (as the eval stage ranks them), and ``preprocess.json`` records the method, which
``ExportedModel.predict`` applies.

Paddle 3.3's oneDNN kernels crash or refuse some graphs (batch norm without affine parameters as in
BNNeck; nearest upsampling as in FPN). With ``cpu_onednn="auto"`` the export runs the predictor in a
child process with each oneDNN mode, fastest first, and records the first that reproduces the model
in ``preprocess.json`` (``runtime.cpu_onednn``), which ``ExportedModel`` then uses.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import paddle
from paddle import nn

from recog.errors import ConfigError, RecogError
from recog.inference import threshold as threshold_file
from recog.inference.predictor import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_KIND,
    MODEL_FILE,
    ONEDNN_MODES,
    ONNX_FILE,
    PARAMS_FILE,
    PREPROCESS_FILE,
    REPORT_FILE,
    ExportedModel,
)
from recog.inference.threshold import Threshold
from recog.models.rec_model import RecModel
from recog.utils import atomic, manifest

log = logging.getLogger(__name__)

INPUT_NAME = "images"


class FeatureExtractor(nn.Layer):
    """``images [N, 3, H, W] float32 -> features [N, D] float32`` of a ``RecModel``, head dropped.

    Shares the model's backbone and neck (no copy); ``normalize`` L2-normalises each row as the
    eval stage does.
    """

    def __init__(self, model: RecModel, normalize: bool):
        super().__init__()
        self.model = RecModel(model.backbone, neck=model.neck, head=None)
        self.normalize = bool(normalize)

    def forward(self, images):
        features = self.model(images)["features"]
        if self.normalize:
            features = nn.functional.normalize(features, axis=1)
        return features


def eval_settings(trained_cfg) -> dict[str, Any]:
    """``normalize`` / ``binarize`` as the eval stage applies them for this trained config."""
    from omegaconf import OmegaConf

    binarize = OmegaConf.select(trained_cfg, "eval.binarize", default=None)
    binarize = getattr(binarize, "value", binarize) or None
    normalize = bool(OmegaConf.select(trained_cfg, "eval.normalize", default=True))
    # As Evaluator: binary codes come from the raw activations (normalising would move them across 0.5).
    return {"normalize": normalize and not binarize, "binarize": binarize}


def dygraph_features(model: RecModel, images: np.ndarray, normalize: bool) -> np.ndarray:
    """Eval-mode features of the dygraph model, as ``recog.evaluation.extract_features`` computes them."""
    was_training = model.training
    model.eval()
    with paddle.no_grad():
        out = model(paddle.to_tensor(np.ascontiguousarray(images, np.float32)))["features"]
        if normalize:
            out = paddle.nn.functional.normalize(out, axis=1)
        features = out.numpy().astype(np.float32)
    if was_training:
        model.train()
    return features


def export_model(
    model: RecModel,
    trained_cfg,
    output_dir,
    check_images: np.ndarray,
    *,
    check_source: str = "random input",
    model_path: str | None = None,
    onnx: bool = False,
    opset_version: int = 13,
    tolerance: float = 1e-4,
    device: str = "cpu",
    cpu_onednn: str = "auto",
    extra: dict[str, Any] | None = None,
    threshold: Threshold | None = None,
) -> dict[str, Any]:
    """Export ``model`` (built from ``trained_cfg``) into ``output_dir`` and check it; returns the report.

    The directory is written beside ``output_dir`` first and only put in place once the exported
    predictor (and onnxruntime with ``onnx``) reproduce the dygraph features of ``check_images``
    (``[N, 3, S, S]`` float32, already preprocessed) within ``tolerance`` (max abs difference).
    Otherwise it is kept as ``<output_dir>.failed`` for inspection and ``RecogError`` says by how much
    it missed. An existing ``output_dir`` is replaced only if it is an earlier export (or empty).
    ``cpu_onednn``: the oneDNN mode recorded for the CPU predictor (``ONEDNN_MODES``), or ``auto``
    for the fastest one that works here (``choose_onednn_mode``: a child process per mode tried).
    ``threshold``: the decision threshold the export carries (``threshold.json``, in the manifest;
    ``recog.inference.threshold``), or None for none.
    """
    cpu_onednn = getattr(cpu_onednn, "value", cpu_onednn)
    if cpu_onednn != "auto" and cpu_onednn not in ONEDNN_MODES:
        raise ConfigError(f"unknown oneDNN mode {cpu_onednn!r}: use auto or one of {', '.join(ONEDNN_MODES)}")
    output_dir = Path(output_dir).resolve()
    check_replaceable(output_dir)
    image_size = int(trained_cfg.data.image_size)
    check_images = np.ascontiguousarray(check_images, np.float32)
    if check_images.ndim != 4 or check_images.shape[1:] != (3, image_size, image_size) or not len(check_images):
        raise ValueError(f"check_images must be [N>0, 3, {image_size}, {image_size}], got {check_images.shape}")
    settings = eval_settings(trained_cfg)
    model.eval()
    reference = dygraph_features(model, check_images, settings["normalize"])
    # Written into a temp directory and swapped in whole (recog.utils.atomic): a failed or killed
    # export leaves the previous one as it was; disk full / permission denied -> StorageError.
    with atomic.replacing_dir(output_dir, what="export") as tmp:
        started = time.perf_counter()
        extractor = FeatureExtractor(model, settings["normalize"])
        extractor.eval()
        spec = paddle.static.InputSpec([None, 3, image_size, image_size], "float32", name=INPUT_NAME)
        paddle.jit.save(extractor, str(tmp / Path(MODEL_FILE).stem), input_spec=[spec])
        if not (tmp / MODEL_FILE).is_file() or not (tmp / PARAMS_FILE).is_file():
            raise RecogError(
                f"paddle.jit.save did not write {MODEL_FILE} and {PARAMS_FILE} "
                f"(Paddle {paddle.__version__} wrote: {sorted(os.listdir(tmp))})"
            )
        preprocess = _preprocess_record(trained_cfg, settings, int(reference.shape[1]), model_path, onnx)
        _write_json(tmp / PREPROCESS_FILE, preprocess)
        if threshold is not None:
            threshold_file.save(tmp, threshold)
        report: dict[str, Any] = {
            "tolerance": float(tolerance),
            "check_input": {
                "source": check_source,
                "num_images": int(len(check_images)),
                "shape": list(check_images.shape),
            },
            "device": device,
            "versions": _versions(onnx),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "threshold": None if threshold is None else threshold.to_dict(),
            **(extra or {}),
        }
        if onnx:
            report["onnx_opset"] = export_onnx(tmp, opset_version)
        if cpu_onednn == "auto":
            mode, attempts = choose_onednn_mode(tmp, check_images, reference, tolerance)
        else:
            mode, attempts = cpu_onednn, {cpu_onednn: "set by export.cpu_onednn (not probed)"}
        preprocess["runtime"]["cpu_onednn"] = mode
        _write_json(tmp / PREPROCESS_FILE, preprocess)
        report["cpu_onednn"], report["cpu_onednn_attempts"] = mode, attempts
        if cpu_onednn == "auto" and mode != ONEDNN_MODES[0]:
            log.info(
                "CPU predictor: oneDNN mode %r for this model (%s)",
                mode,
                "; ".join(f"{k}: {v}" for k, v in attempts.items()),
            )
        manifest.write_manifest(tmp, MANIFEST_KIND)  # the check below loads the folder as a user would
        report["max_abs_diff"] = _compare(tmp, check_images, reference, device, onnx)
        report["export_seconds"] = round(time.perf_counter() - started, 3)
        failed = {k: v for k, v in report["max_abs_diff"].items() if not v < tolerance}
        report["passed"] = not failed
        _write_json(tmp / REPORT_FILE, report)
        manifest.write_manifest(tmp, MANIFEST_KIND)  # last: lists every file of the export
        for name, diff in report["max_abs_diff"].items():
            log.info(
                "export check: max |dygraph - %s| = %.3g on %d images (%s; tolerance %.1g)",
                name,
                diff,
                len(check_images),
                check_source,
                tolerance,
            )
        if failed:
            rejected = output_dir.with_name(output_dir.name + ".failed")
            shutil.rmtree(rejected, ignore_errors=True)
            os.replace(tmp, rejected)
            details = ", ".join(f"{k} {v:.3g}" for k, v in failed.items())
            raise RecogError(
                f"export check failed: the exported model's features differ from the trained model's by "
                f"up to {details} (max abs difference on {len(check_images)} images, {check_source}), "
                f"above export.tolerance={tolerance:g}. The rejected export is in {rejected} "
                f"({REPORT_FILE} has the numbers); {output_dir} was left unchanged"
            )
    return report


def export_onnx(export_dir: Path, opset_version: int) -> int:
    """``model.onnx`` from the Paddle inference model in ``export_dir``; returns the opset written."""
    try:
        import paddle2onnx
    except ImportError:
        raise ConfigError("export.onnx=true needs paddle2onnx (pip install paddle2onnx onnxruntime)") from None
    target = export_dir / ONNX_FILE
    try:
        # optimize_tool="None": the default (polygraphy) would pip-install packages at run time.
        paddle2onnx.export(
            model_filename=str(export_dir / MODEL_FILE),
            params_filename=str(export_dir / PARAMS_FILE),
            save_file=str(target),
            opset_version=int(opset_version),
            auto_upgrade_opset=True,
            enable_onnx_checker=True,
            optimize_tool="None",
            verbose=False,
        )
    except Exception as error:  # paddle2onnx logs the cause, then fails on its own missing result
        raise RecogError(
            f"ONNX conversion with paddle2onnx {getattr(paddle2onnx, '__version__', '?')} failed "
            f"({type(error).__name__}: {error}); export without export.onnx=true, or try another "
            f"export.opset_version"
        ) from None
    if not target.is_file():
        raise RecogError(f"paddle2onnx wrote no {ONNX_FILE}: see its messages above")
    try:
        import onnx

        model = onnx.load(str(target), load_external_data=False)
        return int(next(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")))
    except Exception:  # onnx not installed, or an unexpected file: report the requested opset
        return int(opset_version)


def choose_onednn_mode(
    export_dir: Path, images: np.ndarray, reference: np.ndarray, tolerance: float
) -> tuple[str, dict[str, str]]:
    """The first of ``ONEDNN_MODES`` whose CPU predictor, run in a child process (a oneDNN crash
    must not end the export), reproduces ``reference`` on ``images``, batched and one alone; ``off``
    if none does. Returns the mode and what each mode tried did."""
    attempts: dict[str, str] = {}
    env = dict(os.environ)
    source_root = str(Path(__file__).resolve().parents[2])  # recog importable even if not installed
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source_root, env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory(prefix="recog-probe-") as tmp:
        np.save(os.path.join(tmp, "images.npy"), images)
        out = os.path.join(tmp, "out.npz")
        for mode in ONEDNN_MODES[:-1]:
            command = [
                sys.executable,
                "-m",
                "recog.inference._probe",
                str(export_dir),
                mode,
                os.path.join(tmp, "images.npy"),
                out,
            ]
            try:
                # A session of its own: Ctrl-C in the terminal (SIGINT to the foreground process group)
                # is the parent's to handle, not a crash of the mode probed.
                result = subprocess.run(
                    command, capture_output=True, text=True, timeout=900, env=env, start_new_session=True
                )
            except subprocess.TimeoutExpired:
                attempts[mode] = "timed out"
                continue
            if result.returncode != 0:
                attempts[mode] = _describe_failure(result)
                continue
            with np.load(out) as features:
                diff = max(
                    _max_abs_diff(features["batch"], reference), _max_abs_diff(features["single"], reference[:1])
                )
            if diff < tolerance:
                attempts[mode] = "ok"
                return mode, attempts
            attempts[mode] = f"max abs diff {diff:.3g}"
    return ONEDNN_MODES[-1], attempts


def _describe_failure(result: subprocess.CompletedProcess) -> str:
    if result.returncode < 0:
        return f"crashed (signal {-result.returncode})"
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line and not line.startswith(("File ", "["))]
    message = (errors or lines or [f"exit code {result.returncode}"])[-1]
    if "Segmentation fault" in result.stderr:
        message = "crashed (segmentation fault)"
    return message[:300]


def onnx_features(path: Path, images: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Run ``model.onnx`` with onnxruntime on the CPU."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("checking the ONNX export needs onnxruntime (pip install onnxruntime)") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: unused-initializer notices are harmless
    options.intra_op_num_threads = int(threads or os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0].astype(np.float32)


def _compare(export_dir: Path, images: np.ndarray, reference: np.ndarray, device: str, onnx: bool) -> dict[str, float]:
    exported = ExportedModel(export_dir, device=device)
    features = exported.predict(images, binarize=False)
    single = exported.predict(images[:1], binarize=False)  # dynamic batch: one image alone
    diffs = {
        "paddle_inference": _max_abs_diff(features, reference),
        "paddle_inference_batch1": _max_abs_diff(single, reference[:1]),
    }
    if onnx:
        diffs["onnxruntime"] = _max_abs_diff(onnx_features(export_dir / ONNX_FILE, images), reference)
    return diffs


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


def _preprocess_record(
    trained_cfg, settings: dict[str, Any], feature_dim: int, model_path: str | None, onnx: bool
) -> dict[str, Any]:
    data = trained_cfg.data
    image_size = int(data.image_size)

    def target(node):
        return None if node is None else str(node._target_)

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "files": {"model": MODEL_FILE, "params": PARAMS_FILE, "onnx": ONNX_FILE if onnx else None},
        "input": {
            "name": INPUT_NAME,
            "shape": [-1, 3, image_size, image_size],
            "layout": "NCHW",
            "dtype": "float32",
            "channel_order": "RGB",
        },
        "output": {"shape": [-1, feature_dim], "dtype": "float32"},
        "image_size": image_size,
        "resize": "bilinear, to image_size x image_size (aspect ratio not kept)",
        "pixel_scale": 1 / 255,
        "mean": [float(v) for v in data.mean],
        "std": [float(v) for v in data.std],
        "normalize": settings["normalize"],
        "binarize": settings["binarize"],
        "feature_dim": feature_dim,
        "model": {
            "backbone": target(trained_cfg.backbone),
            "neck": target(trained_cfg.get("neck")),
            "head": target(trained_cfg.get("head")),
            "head_exported": False,
            "stop_layer": trained_cfg.backbone.get("stop_layer"),
        },
        "model_path": str(Path(model_path).resolve()) if model_path else None,
        "runtime": {"cpu_onednn": ONEDNN_MODES[0]},
    }


def _versions(onnx: bool) -> dict[str, str]:
    versions = {"paddle": paddle.__version__}
    if onnx:
        for name in ("paddle2onnx", "onnxruntime"):
            try:
                versions[name] = __import__(name).__version__
            except Exception:  # pragma: no cover - missing packages fail earlier with a clear message
                pass
    return versions


EXPORT_FILES = (
    MODEL_FILE,
    PARAMS_FILE,
    PREPROCESS_FILE,
    REPORT_FILE,
    ONNX_FILE,
    threshold_file.FILE_NAME,
    manifest.MANIFEST_FILE,
)


def check_replaceable(output_dir: Path) -> None:
    """``ConfigError`` unless ``output_dir`` is new, empty or an earlier recog export holding
    nothing else: replacing it must not delete a file of the user's.

    An earlier export is recognised by its ``manifest.json`` (kind ``export``; every file in the
    folder listed in it); one written before manifests existed by holding only the files an export
    writes, with a ``preprocess.json`` of format ``recog-export``.
    """
    output_dir = Path(output_dir)
    if not output_dir.exists() and not output_dir.is_symlink():
        return
    refuse = (
        f"export.output_dir={output_dir} exists and is not a recog export ({{}}): refusing to write into it "
        "(nothing there was changed); choose a new or empty directory, or move those files away"
    )
    if output_dir.is_symlink() or not output_dir.is_dir():
        raise ConfigError(refuse.format("not a directory"))
    entries = sorted(p.name for p in output_dir.iterdir())
    if not entries:
        return
    if manifest.MANIFEST_FILE in entries:
        try:
            found = manifest.read_manifest(output_dir, MANIFEST_KIND, "export", check_unlisted=False)
        except RecogError as error:
            raise ConfigError(refuse.format(f"its {manifest.MANIFEST_FILE} is not an export's: {error}")) from None
        others = manifest.unlisted_files(output_dir, found)  # also folders and symbolic links
        if others:
            raise ConfigError(
                refuse.format(f"it holds files its {manifest.MANIFEST_FILE} does not list: {', '.join(others[:5])}")
            )
        return
    others = [name for name in entries if name not in EXPORT_FILES or not _is_plain_file(output_dir / name)]
    if others:
        raise ConfigError(
            refuse.format(f"no {manifest.MANIFEST_FILE}, and files an export does not write: {', '.join(others[:5])}")
        )
    try:
        legacy = manifest.read_json(output_dir / PREPROCESS_FILE, "export")
    except RecogError:
        legacy = None
    if not (isinstance(legacy, dict) and legacy.get("format") == FORMAT):
        raise ConfigError(refuse.format(f"no {manifest.MANIFEST_FILE}, and no {PREPROCESS_FILE} of format {FORMAT}"))


def _is_plain_file(path: Path) -> bool:
    """A regular file, not a symbolic link (replacing the folder must not remove a user's link)."""
    return path.is_file() and not path.is_symlink()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic.write_file(path, json.dumps(data, indent=2) + "\n")
