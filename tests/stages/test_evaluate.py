"""The eval stage's options: binary codes ranked by Hamming distance."""

import numpy as np
import pytest

import recog
from recog.api import load_splits
from recog.metrics import binarize, hamming_metrics
from recog.stages.evaluate import Evaluator, extract_features


@pytest.mark.parametrize("method", ["sign", "round"])
def test_binarized_eval_is_hamming_ranking_of_the_codes(tmp_path, method):
    cfg = recog.compose(["backbone.scale=0.25", "data.image_size=16", "data.num_workers=0", "neck=tanh",
                         "neck.embedding_size=16", "head=none", f"eval.binarize={method}", f"paths.output_root={tmp_path}"])
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
    assert metrics == expected
    assert "precision_at_1" in metrics and "mAP" in metrics
