"""stage=eval with postprocess=flip / query_expansion / k_reciprocal: its metrics are those of
recog.postprocess applied by hand to features extracted by hand; none by default."""

import json
import logging
from pathlib import Path

import numpy as np
import paddle
import pytest

import recog
from recog.api import load_splits
from recog.evaluation import Evaluator
from recog.metrics import retrieval_metrics
from recog.postprocess import KReciprocal, Pipeline, QueryExpansion, average_flipped, build_postprocess
from recog.stages import evaluate
from recog.utils import checkpoint

TINY = [
    "backbone.scale=0.25",
    "data.image_size=16",
    "neck.embedding_size=16",
    "head.class_num=5",
    "data.num_workers=0",
    "eval.engine=dygraph",
    "mlflow.enabled=false",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A best_model/ (random weights: the post-processing does not depend on training) and the
    hand-extracted query features of the digits' eval split (query == gallery), plain and mirrored."""
    root = tmp_path_factory.mktemp("eval_post")
    cfg = recog.compose(TINY + [f"paths.output_root={root}"])
    # The digits' eval split cut to every 4th of its 896 images (224, all 5 classes): the options'
    # effects and their equality with recog.postprocess do not need more, and each eval was ~75% of a test.
    load_splits(cfg)  # writes the digits under the output root, where the eval stage finds them
    sop_test = Path(cfg.dataset.root) / "Ebay_test.txt"
    rows = sop_test.read_text().splitlines()
    sop_test.write_text("\n".join(rows[:1] + rows[1::4]) + "\n")
    paddle.seed(0)
    model = recog.build_model(cfg)
    path = checkpoint.save_checkpoint(
        root / "run" / "best_model", model, cfg, {"epoch": 1, "mlflow_run_id": "0123456789abcdef0123456789abcdef"}
    )
    model.eval()
    loader = Evaluator(load_splits(cfg), cfg.data, cfg.eval).query
    plain, mirrored, labels = [], [], []
    with paddle.no_grad():
        for images, batch_labels in loader:
            for out, x in ((plain, images), (mirrored, paddle.flip(images, axis=[3]))):
                out.append(paddle.nn.functional.normalize(model(x)["features"], axis=1).numpy())
            labels.append(batch_labels.numpy().reshape(-1))
    assert sum(len(batch) for batch in labels) == 224
    return root, path, np.concatenate(plain), np.concatenate(mirrored), np.concatenate(labels)


def _eval_stage(root, path, tmp_path, *options):
    cfg = recog.compose(TINY + [f"paths.output_root={root}", f"model_path={path}", *options])
    metrics = evaluate.run(cfg, tmp_path / "eval")
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == metrics
    return metrics


def test_no_post_processing_by_default():
    cfg = recog.compose([])
    assert build_postprocess(cfg.postprocess).steps == {}
    assert not build_postprocess(cfg.postprocess).reorders


@pytest.mark.slow
def test_eval_flip_averages_the_features_of_each_image_and_its_mirror(trained, tmp_path, caplog):
    root, path, plain, mirrored, labels = trained
    with caplog.at_level(logging.WARNING):
        metrics = _eval_stage(root, path, tmp_path, "postprocess=flip")
    assert "not mirror-invariant" in caplog.text  # the digits are not
    expected = retrieval_metrics(average_flipped(plain, mirrored), labels)
    assert {k: metrics[k] for k in expected} == pytest.approx(expected, abs=1e-9)
    assert {k: metrics[k] for k in expected} != pytest.approx(retrieval_metrics(plain, labels), abs=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize(
    "options, by_hand",
    [
        (["postprocess=query_expansion", "postprocess.query_expansion.k=3"], {"qe": QueryExpansion(k=3)}),
        (
            ["postprocess=query_expansion", "postprocess.query_expansion.k=4", "postprocess.query_expansion.alpha=3.0"],
            {"qe": QueryExpansion(k=4, alpha=3.0)},
        ),
        (
            [
                "postprocess=k_reciprocal",
                "postprocess.k_reciprocal.k1=8",
                "postprocess.k_reciprocal.k2=3",
                "postprocess.k_reciprocal.lambda_value=0.4",
                "postprocess.k_reciprocal.top_k=40",
            ],
            {"kr": KReciprocal(k1=8, k2=3, lambda_value=0.4, top_k=40)},
        ),
        (
            [
                "postprocess=qe_k_reciprocal",
                "postprocess.query_expansion.k=2",
                "postprocess.k_reciprocal.k1=8",
                "postprocess.k_reciprocal.top_k=30",
            ],
            {"qe": QueryExpansion(k=2), "kr": KReciprocal(k1=8, top_k=30)},
        ),
    ],
)
def test_eval_query_expansion_and_rerank_equal_recog_postprocess_by_hand(trained, tmp_path, options, by_hand):
    root, path, plain, _, labels = trained
    metrics = _eval_stage(root, path, tmp_path, *options)
    expected = Pipeline(by_hand).rank(plain, labels).metrics()
    # The stage's features are the model's, computed in the same batches: equal up to float rounding.
    ranking = {k: metrics[k] for k in expected}  # besides the threshold's metrics
    assert ranking == pytest.approx(expected, abs=1e-6)
    assert ranking != pytest.approx(retrieval_metrics(plain, labels), abs=1e-9)  # the option did something
