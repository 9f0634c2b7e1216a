"""Eval stage: features for query and gallery, then Recall@K and mAP.

``python run.py stage=eval model_path=<run>/best_model``. The model is rebuilt from the config
saved beside its weights, and evaluated on the dataset saved there too unless the command names
another (recog/stages/eval_dataset.py); the log and the MLflow run (tag ``recog.eval_dataset``,
the ``dataset.*`` params, the dataset input) say which. The eval settings come from the current config.
Feature extraction and the metrics are ``recog.evaluation``'s (data parallel with
``launcher.nproc_per_node=N``: each rank extracts its shard, the metrics equal a single
process's). Rank 0 writes ``metrics.json``, ``retrieval.png`` (the first queries' top results),
``worst_queries.png`` (those of the queries of lowest AP), post-processed as the metrics are,
``pair_scores.png`` (the pair-score histograms and DET curve) and ``threshold.json`` (the decision
threshold at ``eval.target_fmr``, which ``stage=export export.threshold=<this run dir>`` ships),
and logs them to MLflow.

SIGINT / SIGTERM stop the extraction after the current batch (nothing is written, the MLflow run
is marked KILLED; ``run.py`` exits 130 / 143).
"""

import logging
import signal
from pathlib import Path

from omegaconf import DictConfig

from recog.builders import build_model, load_splits
from recog.data.bad_images import FILE_NAME as BAD_IMAGES
from recog.data.bad_images import summarize as summarize_bad_images
from recog.data.loader import dataset_options
from recog.distributed import parallel
from recog.errors import ConfigError, TrainingInterrupted
from recog.evaluation import EvalInterrupted, Evaluator, write_metrics
from recog.metrics import format_metrics_table
from recog.stages.eval_dataset import choose_dataset
from recog.stages.eval_dataset import describe as describe_dataset
from recog.tracking import MlflowTracker
from recog.training.resume_config import command_line_overrides
from recog.utils import checkpoint
from recog.utils.interrupt import StopRequest
from recog.utils.precision import amp_settings
from recog.utils.runtime import is_main_process, seed_everything, select_device

log = logging.getLogger(__name__)


def run(cfg: DictConfig, run_dir) -> dict[str, float]:
    """Evaluate ``cfg.model_path``; writes ``metrics.json`` into ``run_dir`` and logs to MLflow."""
    if not cfg.model_path:
        raise ConfigError("stage=eval needs a trained model: model_path=<run dir>/best_model")
    model_path = Path(cfg.model_path)
    if not (model_path / checkpoint.MODEL_FILE).is_file():
        raise ConfigError(f"model_path={model_path} holds no {checkpoint.MODEL_FILE}: point it at a run's best_model/")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    amp = amp_settings(cfg.trainer)
    select_device(cfg.trainer.device)
    _, world = parallel.init_distributed()
    seed_everything(cfg.seed)
    trained_cfg = checkpoint.load_config(model_path, trusted_targets=cfg.trusted_targets)
    model = build_model(trained_cfg)
    checkpoint.load_model_weights(model_path, model)
    chosen = choose_dataset(cfg, trained_cfg, model_path, command_line_overrides())
    cfg = chosen.cfg
    splits = load_splits(cfg)
    evaluated = f"{describe_dataset(cfg.dataset, splits)}; the dataset is {chosen.source}"
    log.info("evaluating %s on %s", model_path, evaluated)
    tracker = MlflowTracker(cfg, stage="eval")
    tracker.set_tag("recog.world_size", str(world))
    tracker.set_tag("recog.eval_dataset", evaluated)
    with tracker.run_status():
        with StopRequest() as stop:
            evaluator = Evaluator(
                splits,
                trained_cfg.data,
                cfg.eval,
                amp=amp,
                options=dataset_options(cfg.data, run_dir),
                postprocess=cfg.postprocess,
            )
            evaluator.stop = stop
            try:
                metrics = evaluator(model)
            except EvalInterrupted as error:
                signum = stop.signum or signal.SIGTERM
                raise TrainingInterrupted(f"{error}; nothing was written", signum) from None
        pictures = []
        if is_main_process():
            write_metrics(metrics, run_dir / "metrics.json")
            pictures = evaluator.save_report(run_dir)  # pictures and threshold.json
        log.info("metrics of %s\n%s", model_path, format_metrics_table(metrics))
        tracker.log_metrics(metrics, step=0)
        for artifact in (run_dir / "metrics.json", *pictures):
            tracker.log_artifact(artifact)
        bad_images = Path(run_dir) / BAD_IMAGES
        if is_main_process() and bad_images.is_file():
            log.warning("%s (left out of the metrics)", summarize_bad_images(bad_images))
            tracker.log_artifact(bad_images)
    return metrics
