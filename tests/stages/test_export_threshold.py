"""The export carries the decision threshold: the best model's own evaluation's (from its
state.json), or the one export.threshold names (a stage=eval run), in threshold.json under the
export's manifest."""

import json

import paddle
import pytest

import recog
from recog.api import load_splits
from recog.errors import ConfigError
from recog.evaluation import Evaluator
from recog.inference import ExportedModel, threshold
from recog.inference.predictor import MANIFEST_KIND
from recog.inference.threshold import Threshold
from recog.stages import export
from recog.utils import checkpoint, manifest
from recog.utils.manifest import IntegrityError

TINY = [
    "backbone.scale=0.25",
    "data.image_size=16",
    "neck.embedding_size=16",
    "head.class_num=5",
    "data.num_workers=0",
    "eval.engine=dygraph",
    "eval.target_fmr=0.002",
    "mlflow.enabled=false",
    "export.check_images=2",
    "export.cpu_onednn=off",
]


@pytest.fixture(scope="module")
def best_model(tmp_path_factory):
    """A best_model/ as training writes it: the weights, and in state.json the metrics of the eval
    that chose it (here one eval of random weights on every 8th digit of the eval split)."""
    root = tmp_path_factory.mktemp("export_threshold")
    cfg = recog.compose(TINY + [f"paths.output_root={root}"])
    load_splits(cfg)  # writes the digits under the output root
    rows = (root / "data" / "digits" / "Ebay_test.txt").read_text().splitlines()
    (root / "data" / "digits" / "Ebay_test.txt").write_text("\n".join(rows[:1] + rows[1::8]) + "\n")
    paddle.seed(0)
    model = recog.build_model(cfg)
    evaluator = Evaluator(load_splits(cfg), cfg.data, cfg.eval, postprocess=cfg.postprocess)
    metrics = evaluator(model)
    state = {"epoch": 3, "step": 30, "best": dict(metrics, epoch=3)}
    path = checkpoint.save_checkpoint(root / "run" / "best_model", model, cfg, state)
    return root, path, evaluator.threshold


@pytest.mark.slow
def test_the_export_carries_the_best_models_threshold_under_its_manifest(best_model):
    root, path, calibrated = best_model
    assert calibrated.target_fmr == 0.002 and calibrated.similarity == "inner_product"
    cfg = recog.compose(TINY + [f"paths.output_root={root}", "stage=export", f"model_path={path}"])
    report = export.run(cfg, root / "export_job")
    out = root / "run" / "export"
    assert threshold.load(out) == calibrated
    assert report["threshold"] == calibrated.to_dict()
    assert threshold.FILE_NAME in json.loads((out / manifest.MANIFEST_FILE).read_text())["files"]
    ExportedModel(out)  # the manifest, threshold.json included, verifies
    (out / threshold.FILE_NAME).write_text(json.dumps(dict(calibrated.to_dict(), score=0.0)))
    with pytest.raises(IntegrityError, match=threshold.FILE_NAME):
        manifest.check_file(out, threshold.FILE_NAME, MANIFEST_KIND, "export")  # an edited threshold is caught


@pytest.mark.slow
def test_only_the_model_the_eval_measured_carries_its_threshold(best_model, tmp_path):
    root, path, calibrated = best_model
    cfg = recog.compose(TINY + [f"paths.output_root={root}"])
    trained_cfg = checkpoint.load_config(path)
    assert export.export_threshold(cfg, path, trained_cfg) == calibrated
    model = recog.build_model(trained_cfg)
    state = checkpoint.load_state(path, required=())
    later = checkpoint.save_checkpoint(tmp_path / "last", model, trained_cfg, dict(state, epoch=4))
    assert export.export_threshold(cfg, later, trained_cfg) is None  # weights of another epoch
    mid_epoch = checkpoint.save_checkpoint(tmp_path / "mid", model, trained_cfg, dict(state, step_in_epoch=2))
    assert export.export_threshold(cfg, mid_epoch, trained_cfg) is None


@pytest.mark.slow
def test_export_threshold_names_the_eval_whose_threshold_to_ship(best_model, tmp_path):
    root, path, _ = best_model
    trained_cfg = checkpoint.load_config(path)
    other = Threshold(score=0.5, target_fmr=1e-4, fnmr=0.2, positive_pairs=10, negative_pairs=100000)
    (tmp_path / "eval_run").mkdir()
    threshold.save(tmp_path / "eval_run", other)
    for given in (tmp_path / "eval_run", tmp_path / "eval_run" / threshold.FILE_NAME):
        cfg = recog.compose(TINY + [f"paths.output_root={root}", f"export.threshold={given}"])
        assert export.export_threshold(cfg, path, trained_cfg) == other
    cfg = recog.compose(TINY + [f"paths.output_root={root}", f"export.threshold={tmp_path}"])
    with pytest.raises(ConfigError, match="no threshold.json there"):
        export.export_threshold(cfg, path, trained_cfg)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / threshold.FILE_NAME).write_text('{"score": 1, "target_fmr": 2}')
    cfg = recog.compose(TINY + [f"paths.output_root={root}", f"export.threshold={tmp_path / 'bad'}"])
    with pytest.raises(ConfigError, match="target_fmr"):
        export.export_threshold(cfg, path, trained_cfg)
