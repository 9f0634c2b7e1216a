"""The eval's report: retrieval.png (the first queries) and worst_queries.png (the queries of lowest
AP) read the eval's own, post-processed RetrievalResults; the threshold calibrated from all pair
scores (threshold.json, pair_scores.png, the threshold metrics)."""

import cv2
import numpy as np
import paddle
import pytest

import recog
from recog.api import load_splits
from recog.evaluation import PAIR_SCORES_PICTURE, RETRIEVAL_PICTURE, WORST_PICTURE, Evaluator
from recog.evaluation import report as report_module
from recog.inference import threshold
from recog.metrics import rank
from recog.metrics.pairs import threshold_metric_names
from recog.search import picture

TINY = ["backbone.scale=0.25", "data.image_size=16", "data.num_workers=0", "eval.engine=dygraph"]
RERANK = ["postprocess=k_reciprocal", "postprocess.k_reciprocal.k1=6", "postprocess.k_reciprocal.top_k=30"]
TILE = 96 + 2 * 4  # thumb + 2 * border, the grid's defaults


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """An Evaluator with k-reciprocal re-ranking, called once on a random-weight model, on the
    digits' eval split cut to every 8th image (112, all 5 classes)."""
    root = tmp_path_factory.mktemp("pictures")
    recog.data.load_digits(str(root / "digits"))
    rows = (root / "digits" / "Ebay_test.txt").read_text().splitlines()
    (root / "digits" / "Ebay_test.txt").write_text("\n".join(rows[:1] + rows[1::8]) + "\n")
    cfg = recog.compose(TINY + RERANK + [f"dataset.root={root / 'digits'}", f"paths.output_root={root}"])
    paddle.seed(0)
    evaluator = Evaluator(load_splits(cfg), cfg.data, cfg.eval, postprocess=cfg.postprocess)
    metrics = evaluator(recog.build_model(cfg))
    return evaluator, metrics


def _frames(png, rows, k=5):
    """Per row of the grid, the frame colour of each result tile: 'g', 'r' or '' (white)."""
    image = cv2.imread(str(png))
    assert image.shape == (rows * TILE, (k + 1) * TILE, 3)
    names = {picture.GREEN: "g", picture.RED: "r", picture.BACKGROUND: ""}
    return [
        [names[tuple(int(c) for c in image[r * TILE + 1, c * TILE + 1])] for c in range(1, k + 1)] for r in range(rows)
    ]


def _expected_frames(results, rows, k=5):
    labels = results.gallery_labels
    return [["g" if labels[j] == results.query_labels[q] else "r" for j in results.indices[q, :k]] for q in rows]


@pytest.mark.slow
def test_the_pictures_show_the_post_processed_ranking_of_the_first_and_the_worst_queries(
    evaluated, tmp_path, monkeypatch
):
    evaluator, metrics = evaluated
    results = evaluator.results
    assert results.metrics(evaluator.recall_at).items() <= metrics.items()  # the metrics read the same object
    written = evaluator.save_report(tmp_path)
    assert written[:2] == [tmp_path / RETRIEVAL_PICTURE, tmp_path / WORST_PICTURE]
    assert _frames(written[0], 8) == _expected_frames(results, range(8))
    worst = results.worst(8)
    assert _frames(written[1], 8) == _expected_frames(results, worst)
    ap = results.average_precision()
    assert ap[worst].max() <= np.nanmin(np.delete(ap, worst))  # no query outside the picture has a lower AP

    drawn = []  # the rows handed to the grid: the re-ranked order, not the plain one
    monkeypatch.setattr(report_module, "save_retrieval_grid", lambda paths, rows, *a, **kw: drawn.append(rows))
    evaluator.save_report(tmp_path / "again")
    query, query_labels, _, _ = evaluator.last
    plain = rank(query, query_labels, k=5)
    shown = [[r["index"] for r in row["results"]] for row in drawn[1]]
    assert shown == results.indices[worst, :5].tolist()
    assert shown != plain.indices[worst].tolist()
    assert [row["query"] for row in drawn[1]] == [evaluator.splits.query[i].path for i in evaluator.last_kept[0][worst]]


def test_query_captions_go_on_the_query_tiles(tmp_path):
    image = np.full((20, 20, 3), 255, np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), image)
    rows = [{"results": [{"path": str(tmp_path / "a.png"), "label": 1}]}]
    plain = cv2.imread(
        picture.retrieval_grid([str(tmp_path / "a.png")], rows, tmp_path / "p.png", k=1, query_labels=[1])
    )
    captioned = cv2.imread(
        picture.retrieval_grid(
            [str(tmp_path / "a.png")], rows, tmp_path / "c.png", k=1, query_labels=[1], query_captions=["AP 0.25"]
        )
    )
    assert (plain[:, :TILE] != captioned[:, :TILE]).any() and (plain[:, TILE:] == captioned[:, TILE:]).all()
    with pytest.raises(ValueError, match="1 query paths but 2 query captions"):
        picture.retrieval_grid(["x"], rows, tmp_path / "x.png", query_captions=["a", "b"])


@pytest.mark.slow
def test_the_threshold_is_calibrated_on_all_pairs_of_the_eval(evaluated, tmp_path):
    evaluator, metrics = evaluated
    assert set(threshold_metric_names()) <= set(metrics)
    query, labels, _, _ = evaluator.last
    scores = query @ query.T
    pairs = ~np.eye(len(query), dtype=bool)
    same = labels[:, None] == labels[None, :]
    negatives, positives = scores[pairs & ~same], scores[pairs & same]
    assert metrics["negative_pairs"] == len(negatives) and metrics["positive_pairs"] == len(positives)
    t = metrics["threshold"]
    # Up to the float rounding of this product (the ranking's own is exact: tests/metrics/test_pairs.py).
    assert metrics["threshold_fmr"] == pytest.approx((negatives >= t).mean(), abs=3 / len(negatives))
    assert metrics["threshold_fmr"] <= 1e-3 < (negatives >= np.sort(negatives)[-int(1e-3 * len(negatives)) - 1]).mean()
    assert metrics["threshold_fnmr"] == pytest.approx((positives < t).mean(), abs=3 / len(positives))
    written = evaluator.save_report(tmp_path)
    assert written[2:] == [tmp_path / PAIR_SCORES_PICTURE, tmp_path / threshold.FILE_NAME]
    assert threshold.load(tmp_path) == evaluator.threshold
    assert evaluator.threshold.score == t and evaluator.threshold.target_fmr == 1e-3
    assert cv2.imread(str(tmp_path / PAIR_SCORES_PICTURE)).shape[:2] == (378, 990)
