"""The eval stage's options: binary codes ranked by Hamming distance; the feature engines (dygraph,
Paddle Inference predictor, auto)."""

import logging

import numpy as np
import paddle
import pytest

import recog
from recog.api import load_splits
from recog.errors import RecogError
from recog.evaluation import Evaluator, extract_features
from recog.inference.eval_predictor import EvalPredictor
from recog.metrics import binarize, hamming_metrics

TINY = ["backbone.scale=0.25", "data.image_size=16", "data.num_workers=0"]
EVAL_IMAGES = 224  # the digits' 896 eval images, every 4th (the ``tiny`` fixture)
# A random-weight model maps the digits to nearly collapsed features (cosines close to 1), and the
# digits hold near-duplicates: differences of 1e-6 between the engines swap results at such near-ties
# (up to 9 of all 896 queries were seen to), so the engines' metrics are not compared with each other:
# the features are, to 1e-4, and each engine's metrics must be exactly those of its own features.


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> list:
    """TINY on the digits written once for the module, their eval split cut to every 4th image
    (EVAL_IMAGES, all 5 classes): the engines' agreement, the weights they follow and the stop after a
    batch do not need all 896, and extracting them was most of each test."""
    root = tmp_path_factory.mktemp("digits")
    recog.data.load_digits(str(root))
    rows = (root / "Ebay_test.txt").read_text().splitlines()
    (root / "Ebay_test.txt").write_text("\n".join(rows[:1] + rows[1::4]) + "\n")
    assert len(recog.data.load_digits(str(root)).query) == EVAL_IMAGES  # still complete: not written again
    return TINY + [f"dataset.root={root}"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sign", "round"])
def test_binarized_eval_is_hamming_ranking_of_the_codes(tmp_path, tiny, method):
    cfg = recog.compose(
        tiny
        + [
            "neck=tanh",
            "neck.embedding_size=16",
            "head=none",
            f"eval.binarize={method}",
            "eval.engine=dygraph",
            f"paths.output_root={tmp_path}",
        ]
    )
    model = recog.build_model(cfg)
    splits = load_splits(cfg)
    evaluator = Evaluator(splits, cfg.data, cfg.eval)
    if method == "round":  # tanh codes are signed: round expects [0, 1] activations and says so
        with pytest.warns(UserWarning, match="round"):
            metrics = evaluator(model)
    else:
        metrics = evaluator(model)
    raw, labels = extract_features(model, evaluator.query, normalize=False)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = hamming_metrics(binarize(raw, method), labels, recall_at=(1, 5, 10))
    assert {k: metrics[k] for k in expected} == expected  # and the threshold's metrics besides
    assert "precision_at_1" in metrics and "mAP" in metrics and "threshold" in metrics


def _evaluators(tmp_path, tiny, *extra):
    """``(model, {engine: Evaluator})`` on the EVAL_IMAGES eval images, one Evaluator per engine."""
    base = tiny + [*(extra or ["neck.embedding_size=24", "head.class_num=5"]), f"paths.output_root={tmp_path}"]
    cfg = recog.compose(base)
    splits = load_splits(cfg)
    engines = {
        engine: Evaluator(splits, cfg.data, recog.compose(base + [f"eval.engine={engine}"]).eval)
        for engine in ("dygraph", "predictor")
    }
    return recog.build_model(cfg), engines


@pytest.mark.slow
def test_predictor_engine_matches_dygraph_and_follows_the_weights(tmp_path, tiny):
    model, engines = _evaluators(tmp_path, tiny)
    before = {}
    for round_ in range(2):
        metrics = {engine: evaluator(model) for engine, evaluator in engines.items()}
        features = {engine: evaluator.last[0] for engine, evaluator in engines.items()}
        assert {e: ev.engine_used for e, ev in engines.items()} == {"dygraph": "dygraph", "predictor": "predictor"}
        assert features["dygraph"].shape == (EVAL_IMAGES, 24)
        np.testing.assert_allclose(features["predictor"], features["dygraph"], atol=1e-4)  # the engine's check
        np.testing.assert_array_equal(engines["predictor"].last[1], engines["dygraph"].last[1])
        for engine, evaluator in engines.items():
            expected = evaluator.post.rank(*evaluator.last).metrics(evaluator.recall_at)
            assert {k: metrics[engine][k] for k in expected} == expected
        if round_ == 0:  # as an optimizer step would: the next eval must see the new weights
            before = features
            with paddle.no_grad():
                for param in model.parameters():
                    param.set_value(param * 1.5 + 0.01)
    assert not np.allclose(before["predictor"], features["predictor"], atol=1e-3)
    assert model.training  # a freshly built model trains; eval left it so


@pytest.mark.slow
def test_predictor_engine_with_binary_codes(tmp_path, tiny):
    model, engines = _evaluators(
        tmp_path, tiny, "neck=tanh", "neck.embedding_size=16", "head=none", "eval.binarize=sign"
    )
    metrics = {engine: evaluator(model) for engine, evaluator in engines.items()}
    raw = {engine: evaluator.last[0] for engine, evaluator in engines.items()}
    scale = np.abs(raw["dygraph"]).max()  # raw tanh activations (not normalised): tiny at initialisation
    assert scale > 0 and not np.allclose(np.linalg.norm(raw["dygraph"], axis=1), 1.0)
    assert np.abs(raw["predictor"] - raw["dygraph"]).max() <= 1e-4 * scale
    np.testing.assert_array_equal(binarize(raw["predictor"], "sign"), binarize(raw["dygraph"], "sign"))
    for engine, evaluator in engines.items():
        query, query_labels, gallery, gallery_labels = evaluator.last
        expected = hamming_metrics(
            binarize(query, "sign"), query_labels, gallery, gallery_labels, recall_at=evaluator.recall_at
        )
        assert {k: metrics[engine][k] for k in expected} == expected
    assert metrics["predictor"] == metrics["dygraph"]  # equal codes, equal Hamming ranking


@pytest.mark.slow
def test_auto_engine_picks_the_predictor_for_large_eval_sets_only(tmp_path, tiny):
    cfg = recog.compose(tiny + ["head.class_num=5", f"paths.output_root={tmp_path}"])
    splits = load_splits(cfg)
    model = recog.build_model(cfg)
    small = Evaluator(splits, cfg.data, cfg.eval)  # 224 images x 16^2 px = 0.057 megapixels < 1.0
    large = Evaluator(splits, cfg.data, recog.compose(tiny + ["eval.predictor_min_megapixels=0.05"]).eval)
    assert not small.wants_predictor() and large.wants_predictor()
    small(model)
    large(model)
    assert small.engine_used == "dygraph" and small.predictor is None
    assert large.engine_used == "predictor" and large.predictor.onednn == "full"
    np.testing.assert_allclose(large.last[0], small.last[0], atol=1e-4)


@pytest.mark.slow
def test_auto_falls_back_to_dygraph_when_the_predictor_fails_and_predictor_says_why(
    tmp_path, tiny, monkeypatch, caplog
):
    def refuse(self):
        raise RecogError("the eval predictor differs from the dygraph model by 0.5")

    monkeypatch.setattr(EvalPredictor, "refresh", refuse)
    cfg = recog.compose(tiny + ["head.class_num=5", "eval.predictor_min_megapixels=0", f"paths.output_root={tmp_path}"])
    splits = load_splits(cfg)
    model = recog.build_model(cfg)
    auto = Evaluator(splits, cfg.data, cfg.eval)
    with caplog.at_level(logging.WARNING, logger="recog.evaluation.evaluator"):
        metrics = auto(model)
    assert auto.engine_used == "dygraph" and "recall_at_1" in metrics
    assert "eval.engine=auto" in caplog.text and "differs from the dygraph model by 0.5" in caplog.text
    explicit = Evaluator(splits, cfg.data, recog.compose(tiny + ["eval.engine=predictor"]).eval)
    with pytest.raises(RecogError, match="differs from the dygraph model"):
        explicit(model)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["dygraph", "predictor"])
def test_a_stop_request_ends_the_eval_after_the_current_batch(tmp_path, tiny, engine, monkeypatch):
    """Ctrl-C / SIGTERM during an eval stops it after the current batch, not after the whole eval."""
    import signal

    from recog.data.dataset import ImageDataset
    from recog.evaluation import EvalInterrupted
    from recog.utils.interrupt import StopRequest

    cfg = recog.compose(tiny + [f"eval.engine={engine}", "data.eval_batch_size=16", f"paths.output_root={tmp_path}"])
    model = recog.build_model(cfg)
    evaluator = Evaluator(load_splits(cfg), cfg.data, cfg.eval)
    evaluator.stop = stop = StopRequest()  # not entered: the test sets it as the signal handler would
    real_check, batches = ImageDataset.check_batch, []

    def check_batch(self, labels, training=False):
        batches.append(len(labels))
        if len(batches) == 2:
            stop.signum = signal.SIGINT
        return real_check(self, labels, training)

    monkeypatch.setattr(ImageDataset, "check_batch", check_batch)
    with pytest.raises(EvalInterrupted, match="eval stopped by SIGINT"):
        evaluator(model)
    assert len(batches) == 2 and len(evaluator.query) == 14  # 2 of the 14 query batches, and no gallery batch
    assert evaluator.last is None  # no partial result left behind


def test_ctrl_c_during_the_eval_stage_stops_it_and_writes_nothing(tmp_path, tiny, monkeypatch, sigint_default):
    import os
    import signal

    from recog.errors import TrainingInterrupted
    from recog.evaluation import evaluator as module
    from recog.stages import evaluate
    from recog.utils import checkpoint

    overrides = tiny + [
        "eval.engine=dygraph",
        "data.eval_batch_size=16",
        f"paths.output_root={tmp_path}",
        "mlflow.enabled=false",
        "head.class_num=5",
    ]
    cfg = recog.compose(overrides)
    checkpoint.save_checkpoint(tmp_path / "model", recog.build_model(cfg), cfg, {"epoch": 0})
    real, batches = module.to_device, []

    def to_device(tensor):
        batches.append(1)
        if len(batches) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the first batch is computed
        return real(tensor)

    monkeypatch.setattr(module, "to_device", to_device)
    with pytest.raises(TrainingInterrupted, match="eval stopped by SIGINT.*nothing was written") as stopped:
        evaluate.run(recog.compose(overrides + ["stage=eval", f"model_path={tmp_path / 'model'}"]), tmp_path / "eval")
    assert stopped.value.exit_code == 130 and len(batches) == 1
    assert not (tmp_path / "eval" / "metrics.json").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the stage's handlers are gone
