"""stage=predict's gallery search with postprocess=flip / query_expansion / k_reciprocal."""

import json

import cv2
import numpy as np
import pytest

import recog
from recog.errors import ConfigError
from recog.inference import ExportedModel, preprocess_image
from recog.inference.export import export_model
from recog.postprocess import KReciprocal, Pipeline, average_flipped, k_reciprocal_rerank, query_expansion
from recog.search import GalleryIndex
from recog.stages import predict


@pytest.fixture(scope="module")
def export_dir(exported):
    return exported[0]  # tests/conftest.py


def _images(folder, count, seed):
    """PNG files of 3 classes (a bright bar at a class-specific place, asymmetric left-right) and
    their list ``path label``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(count):
        image = (rng.random((20, 20, 3)) * 60).astype(np.uint8)
        c = i % 3
        image[2 + 5 * c : 8 + 5 * c, 2 : 9 + 3 * c] = 255
        cv2.imwrite(str(folder / f"{i:03d}.png"), image)
        lines.append(f"{folder.name}/{i:03d}.png {c}")
    (folder.parent / f"{folder.name}.txt").write_text("\n".join(lines) + "\n")
    return folder.parent / f"{folder.name}.txt"


def _run(tmp_path, export_dir, out, *overrides):
    queries, gallery = _images(tmp_path / "q", 8, seed=1), _images(tmp_path / "g", 15, seed=2)
    cfg = recog.compose(
        [
            f"paths.output_root={tmp_path}",
            "mlflow.enabled=false",
            f"predict.model_dir={export_dir}",
            f"predict.input={queries}",
            f"predict.gallery={gallery}",
            "predict.top_k=6",
            "predict.picture_queries=0",
            *overrides,
        ]
    )
    summary = predict.run(cfg, tmp_path / out)
    results = json.loads((tmp_path / out / "results.json").read_text())
    q = np.load(tmp_path / out / "features.npy")
    index = GalleryIndex.load(tmp_path / out / "gallery")
    return summary, results, q, index


@pytest.mark.slow
def test_predict_with_rerank_returns_the_reranked_order(tmp_path, export_dir):
    options = [
        "postprocess=k_reciprocal",
        "postprocess.k_reciprocal.k1=4",
        "postprocess.k_reciprocal.k2=2",
        "postprocess.k_reciprocal.lambda_value=0.2",
    ]
    summary, results, q, index = _run(tmp_path, export_dir, "rerank", *options)
    g = index.gallery_vectors()
    expected, distances = k_reciprocal_rerank(q, g, k1=4, k2=2, lambda_value=0.2, top_k=100)
    assert [[r["index"] for r in row["results"]] for row in results] == expected[:, :6].tolist()
    for row, d in zip(results, distances[:, :6]):
        np.testing.assert_allclose([r["rerank_distance"] for r in row["results"]], d, rtol=1e-6, atol=1e-6)
        assert [r["rank"] for r in row["results"]] == list(range(1, 7))
    plain = np.argsort(-(q @ g.T), axis=1, kind="stable")[:, :6]
    assert (expected[:, :6] != plain).any()  # re-ranking changed some order
    metrics = json.loads((tmp_path / "rerank" / "metrics.json").read_text())
    by_hand = Pipeline({"kr": KReciprocal(k1=4, k2=2, lambda_value=0.2)})
    assert metrics == by_hand.rank(q, [r["label"] for r in results], g, index.labels).metrics()
    assert summary["metrics"] == metrics


@pytest.mark.slow
def test_predict_with_query_expansion_searches_with_the_expanded_queries(tmp_path, export_dir):
    _, results, q, index = _run(
        tmp_path,
        export_dir,
        "qe",
        "postprocess=query_expansion",
        "postprocess.query_expansion.k=2",
        "postprocess.query_expansion.alpha=1.0",
    )
    g = index.gallery_vectors()
    expected = index.results(query_expansion(q, g, k=2, alpha=1.0), 6)
    assert [[r["index"] for r in row["results"]] for row in results] == [
        [r["index"] for r in row["results"]] for row in expected
    ]
    assert np.array_equal(np.load(tmp_path / "qe" / "features.npy"), q)  # the saved features are not expanded


def test_predict_with_flip_averages_image_and_mirror_features(tmp_path, export_dir):
    _, _, q, index = _run(tmp_path, export_dir, "flip", "postprocess=flip")
    model = ExportedModel(export_dir)
    paths = sorted((tmp_path / "q").glob("*.png"))
    images = np.stack(
        [preprocess_image(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB), model.preprocess) for p in paths]
    )
    plain = model.predict(images)
    expected = average_flipped(
        plain, model.predict(np.ascontiguousarray(images[..., ::-1])), normalize=bool(model.preprocess["normalize"])
    )
    np.testing.assert_allclose(q, expected, atol=1e-5)
    assert not np.allclose(q, plain, atol=1e-3)
    assert index.ntotal == 15


@pytest.mark.slow
def test_predict_post_processing_of_binary_codes_is_refused(tmp_path):
    cfg = recog.compose(
        [
            "backbone.scale=0.25",
            "data.image_size=32",
            "neck=tanh",
            "neck.embedding_size=16",
            "head=none",
            "eval.binarize=sign",
            f"paths.output_root={tmp_path}",
        ]
    )
    images = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    export_model(recog.build_model(cfg), cfg, tmp_path / "export", images, cpu_onednn="full")
    _images(tmp_path / "q", 2, seed=0)
    cfg = recog.compose(
        [
            f"paths.output_root={tmp_path}",
            "mlflow.enabled=false",
            f"predict.model_dir={tmp_path / 'export'}",
            f"predict.input={tmp_path / 'q'}",
            "postprocess=flip",
        ]
    )
    with pytest.raises(ConfigError, match="binary codes"):
        predict.run(cfg, tmp_path / "out")
