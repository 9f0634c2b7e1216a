"""What a run is called and which training run it links to.

``train pplcnet x1.0 arcmargin 14:03`` (stage, backbone and width, head, start time); eval,
export and predict runs: ``<stage> <the training run's name>``, with the tag ``recog.train_run_id``
and a link to that run in their description (``mlflow.note.content``, shown on the run's page).
"""

import json
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from recog.errors import RecogError

TRAIN_RUN_TAG, NOTE_TAG = "recog.train_run_id", "mlflow.note.content"


def default_run_name(cfg: DictConfig, stage: str = "train", train_run_name: str | None = None) -> str:
    """``train pplcnet x1.0 arcmargin 14:03`` (stage, backbone and width, head, start time); an eval,
    export or predict run: ``<stage> <the training run's name>`` when it is known."""
    if stage != "train" and train_run_name:
        return f"{stage} {train_run_name}"
    clock = time.strftime("%H:%M")
    if stage != "train":
        source = OmegaConf.select(cfg, "predict.model_dir" if stage == "predict" else "model_path")
        where = Path(str(source)).resolve() if source else None
        label = f"{where.parent.name}/{where.name}" if where is not None else ""
        return " ".join(filter(None, [stage, label, clock]))

    def short(node) -> str:
        return "none" if node is None else str(node._target_).rsplit(".", 1)[-1].lower()

    backbone = cfg.backbone
    width = backbone.get("scale")
    depth = backbone.get("depth")
    size = f"x{float(width)}" if width is not None else (str(depth) if depth is not None else "")
    return " ".join(filter(None, ["train", short(backbone), size, short(cfg.get("head")), clock]))


def training_run_id(cfg: DictConfig, stage: str) -> str | None:
    """The MLflow run id of the training run whose model an eval (``model_path``'s ``state.json``) or
    predict run (``predict.model_dir``'s ``export_report.json``) uses; None when unknown."""
    try:
        if stage == "eval" and cfg.get("model_path"):
            from recog.utils import checkpoint

            path = Path(str(cfg.model_path))
            if (path / checkpoint.STATE_FILE).is_file():
                return checkpoint.load_state(path, required=()).get("mlflow_run_id")
        if stage == "predict" and OmegaConf.select(cfg, "predict.model_dir"):
            from recog.inference.predictor import REPORT_FILE

            report = Path(str(cfg.predict.model_dir)) / REPORT_FILE
            if report.is_file():
                found = json.loads(report.read_text())
                value = found.get("train_run_id") or found.get("mlflow_run_id") if isinstance(found, dict) else None
                return value if isinstance(value, str) else None
    except (OSError, ValueError, RecogError):  # the stage itself reports a bad model folder
        return None
    return None


def training_run_link(train_run, stage: str) -> dict[str, str]:
    """Tags linking a run to ``train_run``: ``recog.train_run_id`` and a description (shown in the
    run's page) with a link to it."""
    info = train_run.info
    link = f"#/experiments/{info.experiment_id}/runs/{info.run_id}"
    verb = {"eval": "Evaluates", "export": "Exports", "predict": "Extracts features with"}.get(stage, "Uses")
    return {
        TRAIN_RUN_TAG: info.run_id,
        NOTE_TAG: f"{verb} the model of training run [{info.run_name or info.run_id}]({link}) (`{info.run_id}`).",
    }
