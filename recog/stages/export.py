"""Export stage: a deployable Paddle inference model (optionally ONNX) of a trained model.

``python run.py stage=export model_path=<run>/best_model [export.onnx=true]`` rebuilds the model
from ``config.yaml`` and the weights beside it (as the eval stage does) and writes, by default
into ``<run>/export`` (``export.output_dir``)::

    inference.json, inference.pdiparams   images [N, 3, H, W] float32 -> features [N, D] float32
    preprocess.json                       image size, mean/std, RGB, NCHW, normalize, binarize, ...
    export_report.json                    the self-check: max |dygraph - exported| per runtime
    threshold.json                        the decision threshold (``export_threshold``), if any
    model.onnx                            with export.onnx=true

The export is checked on up to ``export.check_images`` images of the configured dataset's eval
split (random input if no dataset can be read) and the stage fails if any runtime differs from
the dygraph features by ``export.tolerance`` or more. The folder is logged as artifact ``export/``
and as the MLflow Model ``model`` (``runs:/<run id>/model``, recog/tracking/mlflow_model.py) of the
training run (found through ``state.json``'s ``mlflow_run_id``) without touching that run's
status, or, if the tracking store does not hold that run, of a new run tagged ``recog.stage=export``.
``manifest.json`` (size and SHA-256 of every file) is written last; loading verifies it. An
existing ``output_dir`` is replaced only if it is an earlier recog export holding nothing else.

``stage=train`` runs the same export of its best model at its end (``export_after_training``,
called by its ``ExportAfterTraining`` callback) unless ``export.after_train=false``.
Load it with ``recog.inference.ExportedModel``. The folder is written beside ``output_dir`` and
swapped in whole (``recog.utils.atomic``): a failed, killed or disk-full export leaves the
previous export as it was (disk full / permission denied: ``StorageError``, exit code 2).

Options (``export.*``): ``output_dir``, ``onnx``, ``opset_version``, ``tolerance`` (1e-4),
``check_images`` (16), ``cpu_onednn`` (``auto``: the fastest oneDNN mode that works for this model,
probed in a child process; or ``full`` / ``no_placement`` / ``off`` without probing).
"""

import logging
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from recog.builders import build_model, load_splits
from recog.data import ImageDataset, build_transform
from recog.errors import ConfigError, RecogError
from recog.evaluation.calibration import threshold_from_metrics
from recog.inference import threshold as threshold_file
from recog.inference.export import check_replaceable, export_model
from recog.inference.threshold import Threshold
from recog.postprocess import build_postprocess
from recog.tracking import MlflowTracker
from recog.training.callbacks import Callback
from recog.utils import checkpoint
from recog.utils.runtime import is_main_process, seed_everything, select_device

log = logging.getLogger(__name__)


def run(cfg: DictConfig, run_dir) -> dict[str, Any]:
    """Export ``cfg.model_path``; returns the check report (plus ``output_dir``)."""
    model_path = check_model_path(cfg.model_path)
    check_options(cfg.export)
    output_dir = Path(cfg.export.output_dir) if cfg.export.output_dir else model_path.parent / "export"
    check_replaceable(output_dir)  # before any work: never overwrite a folder that is not an export
    state = checkpoint.load_state(model_path, required=()) if (model_path / checkpoint.STATE_FILE).is_file() else {}
    train_run_id = state.get("mlflow_run_id")
    if MlflowTracker.run_exists(cfg, train_run_id):
        tracker = MlflowTracker(cfg, stage="export", run_id=train_run_id, keep_status=True)
    else:
        tracker = MlflowTracker(cfg, stage="export")
        tracker.set_tag("recog.model_path", str(model_path))
        if train_run_id and tracker.active:
            log.info("the training run %s is not in %s: logging the export as a new run", train_run_id, tracker.uri)
    try:
        report = export_and_log(cfg, model_path, output_dir, tracker, train_run_id)
    except BaseException:
        tracker.finish("FAILED")  # a no-op on the training run: its status stays as it was
        raise
    tracker.finish()
    log.info(
        "exported %s to %s: features [N, %d]%s; %s",
        model_path,
        output_dir.resolve(),
        report["feature_dim"],
        " + model.onnx" if cfg.export.onnx else "",
        tracker.describe(),
    )
    return dict(report, output_dir=str(output_dir.resolve()))


def export_after_training(cfg: DictConfig, run_dir, tracker: MlflowTracker) -> dict[str, Any] | None:
    """The end of ``stage=train``: export ``<run>/best_model`` into ``<run>/export`` (or
    ``export.output_dir``) and log it to the training run, as artifact ``export/`` and as the
    run's MLflow Model ``model``. Skipped (None) with ``export.after_train=false``, without a best
    model, and on ranks other than 0."""
    model_path = Path(run_dir) / "best_model"
    if not cfg.export.after_train or not is_main_process() or not checkpoint.has_checkpoint(model_path):
        return None
    check_options(cfg.export)
    output_dir = Path(cfg.export.output_dir) if cfg.export.output_dir else Path(run_dir) / "export"
    check_replaceable(output_dir)
    report = export_and_log(cfg, model_path, output_dir, tracker, tracker.run_id)
    log.info("exported the best model to %s (export.after_train=false skips this)", output_dir.resolve())
    return report


class ExportAfterTraining(Callback):
    """The training run's last step: ``export_after_training`` of its best model."""

    def on_fit_end(self, trainer, state):
        export_after_training(trainer.cfg, trainer.run_dir, trainer.tracker)


def export_and_log(
    cfg: DictConfig, model_path: Path, output_dir: Path, tracker: MlflowTracker, train_run_id: str | None
) -> dict[str, Any]:
    """Rebuild the model of ``model_path``, export it into ``output_dir`` (checked), and log the
    folder to ``tracker``'s run: artifact ``export/`` and the MLflow Model ``model``."""
    export_cfg = cfg.export
    device = select_device(cfg.trainer.device)
    seed_everything(cfg.seed)
    trained_cfg = checkpoint.load_config(model_path, trusted_targets=cfg.trusted_targets)
    model = build_model(trained_cfg)
    checkpoint.load_model_weights(model_path, model)
    model.eval()
    images, source = check_batch(cfg, trained_cfg)
    threshold = export_threshold(cfg, model_path, trained_cfg)
    report = export_model(
        model,
        trained_cfg,
        output_dir,
        images,
        check_source=source,
        model_path=str(model_path),
        onnx=export_cfg.onnx,
        opset_version=export_cfg.opset_version,
        tolerance=export_cfg.tolerance,
        device=device,
        cpu_onednn=export_cfg.cpu_onednn,
        extra={"mlflow_run_id": tracker.run_id, "train_run_id": train_run_id},
        threshold=threshold,
    )
    tracker.log_artifact(output_dir, "export")
    tracker.set_tag("recog.export_dir", str(output_dir.resolve()))
    tracker.log_model(output_dir)
    if not tracker.keep_status and tracker.stage == "export":  # a run of its own: the check numbers too
        tracker.log_metrics({f"export_max_abs_diff_{k}": v for k, v in report["max_abs_diff"].items()}, step=0)
    return dict(report, feature_dim=int(model.embedding_size))


def export_threshold(cfg: DictConfig, model_path: Path, trained_cfg: DictConfig) -> Threshold | None:
    """The decision threshold the export carries: ``export.threshold`` (a ``threshold.json``, or the
    folder holding one, e.g. a ``stage=eval`` run) when set; otherwise the one the best model's own
    evaluation calibrated (its metrics in ``state.json``), when ``model_path`` holds the model of that
    evaluation (a ``best_model/``, or a checkpoint written at the end of the best epoch); else None."""
    given = cfg.export.get("threshold")
    if given:
        path = Path(given)
        folder = path.parent if path.name == threshold_file.FILE_NAME else path
        found = threshold_file.load(folder)
        if found is None:
            raise ConfigError(f"export.threshold={given}: no {threshold_file.FILE_NAME} there (stage=eval writes one)")
        log.info("export threshold from %s: %s", given, found)
        return found
    state = checkpoint.load_state(model_path, required=()) if (model_path / checkpoint.STATE_FILE).is_file() else {}
    best = state.get("best") or {}
    if best.get("epoch") != state.get("epoch") or state.get("step_in_epoch"):
        log.info("no threshold in the export: %s is not the model its state's best eval measured", model_path)
        return None
    evaluation = trained_cfg.get("eval") or {}
    target_fmr = evaluation.get("target_fmr")
    found = None if target_fmr is None else threshold_from_metrics(best, target_fmr, bool(evaluation.get("binarize")))
    if found is None:
        log.info("no threshold in the export: the best model's eval calibrated none")
        return None
    if build_postprocess(trained_cfg.get("postprocess")).changes_scores:
        log.warning(
            "the exported threshold was calibrated on post-processed scores (postprocess: flip or query "
            "expansion), which a search with the exported model does not compute: calibrate one with "
            "stage=eval postprocess=none and export with export.threshold=<that run dir>"
        )
    log.info("export threshold of the best model's eval (epoch %s): %s", best.get("epoch"), found)
    return found


def check_options(export_cfg) -> None:
    if export_cfg.check_images < 1:
        raise ConfigError(f"export.check_images must be at least 1, got {export_cfg.check_images}")
    if not export_cfg.tolerance > 0:
        raise ConfigError(f"export.tolerance must be positive, got {export_cfg.tolerance}")


def check_model_path(model_path) -> Path:
    """The trained model directory, or ``ConfigError`` saying what ``model_path`` must be."""
    if not model_path:
        raise ConfigError("stage=export needs a trained model: model_path=<run dir>/best_model")
    path = Path(model_path)
    if not path.is_dir():
        raise ConfigError(f"model_path={path} does not exist or is not a directory: point it at a run's best_model/")
    for name in (checkpoint.MODEL_FILE, checkpoint.CONFIG_FILE):
        if not (path / name).is_file():
            raise ConfigError(
                f"model_path={path} holds no {name}: point it at a run's best_model/ (which holds "
                f"{checkpoint.MODEL_FILE}, {checkpoint.CONFIG_FILE} and {checkpoint.STATE_FILE})"
            )
    return path


def check_batch(cfg: DictConfig, trained_cfg: DictConfig) -> tuple[np.ndarray, str]:
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
