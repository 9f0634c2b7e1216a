"""Export stage: a deployable Paddle inference model (optionally ONNX) of a trained model.

``python run.py stage=export model_path=<run>/best_model [export.onnx=true]`` rebuilds the model
from ``config.yaml`` and the weights beside it (as the eval stage does) and writes, by default
into ``<run>/export`` (``export.output_dir``)::

    inference.json, inference.pdiparams   images [N, 3, H, W] float32 -> features [N, D] float32
    preprocess.json                       image size, mean/std, RGB, NCHW, normalize, binarize, ...
    export_report.json                    the self-check: max |dygraph - exported| per runtime
    model.onnx                            with export.onnx=true

The export is checked on up to ``export.check_images`` images of the configured dataset's eval
split (random input if no dataset can be read) and the stage fails if any runtime differs from
the dygraph features by ``export.tolerance`` or more. The folder is logged as artifact ``export/``
of the training run (found through ``state.json``'s ``mlflow_run_id``) without touching that run's
status, or, if the tracking store does not hold that run, of a new run tagged ``recog.stage=export``.
Load it with ``recog.inference.ExportedModel``. The folder is written beside ``output_dir`` and
swapped in whole (``recog.utils.atomic``): a failed, killed or disk-full export leaves the
previous export as it was (disk full / permission denied: ``StorageError``, exit code 2).

Options (``export.*``): ``output_dir``, ``onnx``, ``opset_version``, ``tolerance`` (1e-4),
``check_images`` (16), ``cpu_onednn`` (``auto``: the fastest oneDNN mode that works for this model,
probed in a child process; or ``full`` / ``no_placement`` / ``off`` without probing).
"""

import logging
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np
from omegaconf import DictConfig

from recog.api import build_model, load_splits
from recog.data import ImageDataset, build_transform
from recog.errors import ConfigError, RecogError
from recog.inference.export import check_replaceable, export_model
from recog.tracking import MlflowTracker
from recog.utils import checkpoint
from recog.utils.runtime import seed_everything, select_device

log = logging.getLogger(__name__)


def run(cfg: DictConfig, run_dir) -> Dict[str, Any]:
    """Export ``cfg.model_path``; returns the check report (plus ``output_dir``)."""
    model_path = check_model_path(cfg.model_path)
    export_cfg = cfg.export
    if export_cfg.check_images < 1:
        raise ConfigError(f"export.check_images must be at least 1, got {export_cfg.check_images}")
    if not export_cfg.tolerance > 0:
        raise ConfigError(f"export.tolerance must be positive, got {export_cfg.tolerance}")
    output_dir = Path(export_cfg.output_dir) if export_cfg.output_dir else model_path.parent / "export"
    check_replaceable(output_dir)  # before any work: never overwrite a folder that is not an export
    device = select_device(cfg.trainer.device)
    seed_everything(cfg.seed)
    trained_cfg = checkpoint.load_config(model_path, trusted_targets=cfg.trusted_targets)
    model = build_model(trained_cfg)
    checkpoint.load_model_weights(model_path, model)
    model.eval()
    images, source = check_batch(cfg, trained_cfg)

    state = checkpoint.load_state(model_path) if (model_path / checkpoint.STATE_FILE).is_file() else {}
    train_run_id = state.get("mlflow_run_id")
    if MlflowTracker.run_exists(cfg, train_run_id):
        tracker = MlflowTracker(cfg, stage="export", run_id=train_run_id, keep_status=True)
    else:
        tracker = MlflowTracker(cfg, stage="export")
        tracker.set_tag("recog.model_path", str(model_path))
        if train_run_id and tracker.active:
            log.info("the training run %s is not in %s: logging the export as a new run", train_run_id, tracker.uri)
    try:
        report = export_model(model, trained_cfg, output_dir, images, check_source=source, model_path=str(model_path),
                              onnx=export_cfg.onnx, opset_version=export_cfg.opset_version,
                              tolerance=export_cfg.tolerance, device=device, cpu_onednn=export_cfg.cpu_onednn,
                              extra={"mlflow_run_id": tracker.run_id})
        tracker.log_artifact(output_dir, "export")
        tracker.set_tag("recog.export_dir", str(output_dir.resolve()))
        if not tracker.keep_status:  # a run of its own: the check numbers as metrics too
            tracker.log_metrics({f"export_max_abs_diff_{k}": v for k, v in report["max_abs_diff"].items()}, step=0)
    except BaseException:
        tracker.finish("FAILED")  # a no-op on the training run: its status stays as it was
        raise
    tracker.finish()
    log.info("exported %s to %s: features [N, %d]%s; %s", model_path, output_dir.resolve(),
             int(model.embedding_size), " + model.onnx" if export_cfg.onnx else "", tracker.describe())
    return dict(report, output_dir=str(output_dir.resolve()))


def check_model_path(model_path) -> Path:
    """The trained model directory, or ``ConfigError`` saying what ``model_path`` must be."""
    if not model_path:
        raise ConfigError("stage=export needs a trained model: model_path=<run dir>/best_model")
    path = Path(model_path)
    if not path.is_dir():
        raise ConfigError(f"model_path={path} does not exist or is not a directory: point it at a run's best_model/")
    for name in (checkpoint.MODEL_FILE, checkpoint.CONFIG_FILE):
        if not (path / name).is_file():
            raise ConfigError(f"model_path={path} holds no {name}: point it at a run's best_model/ (which holds "
                              f"{checkpoint.MODEL_FILE}, {checkpoint.CONFIG_FILE} and {checkpoint.STATE_FILE})")
    return path


def check_batch(cfg: DictConfig, trained_cfg: DictConfig) -> Tuple[np.ndarray, str]:
    """Up to ``export.check_images`` eval-split images through the eval transform, and where they came from.

    Falls back to random input (seeded) when the configured dataset cannot be read.
    """
    data = trained_cfg.data
    count = int(cfg.export.check_images)
    transform = build_transform(data.image_size, data.mean, data.std, train=False, hflip=False)
    try:
        splits = load_splits(cfg)
        samples = splits.query
        picks = sorted(set(np.linspace(0, len(samples) - 1, num=min(count, len(samples))).round().astype(int)))
        dataset = ImageDataset([samples[i] for i in picks], transform)
        batch = [dataset[i] for i in range(len(dataset))]
        images = [image for image, label in batch if label >= 0]  # label < 0: undecodable, skipped
        if images:
            name = str(cfg.dataset._target_).rsplit(".", 1)[-1].replace("load_", "")
            return np.stack(images).astype(np.float32), f"eval-split (query) images of dataset {name}"
        reason = "none of the picked eval images could be decoded"
    except (RecogError, OSError) as error:
        reason = str(error)
    log.warning("export check on random input: no eval images available (%s)", reason)
    rng = np.random.default_rng(cfg.seed)
    size = int(data.image_size)
    return rng.standard_normal((count, 3, size, size)).astype(np.float32), "random input (no dataset available)"
