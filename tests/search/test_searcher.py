"""GallerySearcher: an export and its gallery index answering per query image with matches and a
decision (a label, or "unknown" below the threshold; the best label and a note without one)."""

import json
import shutil

import numpy as np
import pytest
from exports import read_rgb, tiny_export, with_threshold, write_gallery

from recog.errors import ConfigError, DataError
from recog.inference import ExportedModel
from recog.search import GalleryIndex, ModelMismatchError, model_digest
from recog.search.searcher import NO_THRESHOLD, UNKNOWN, GallerySearcher, choose_threshold, write_search_folder
from recog.stages.predict import read_items

pytestmark = pytest.mark.xdist_group("test_searcher")  # one xdist worker builds the module fixture once


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """``(root, export, index dir, gallery paths, gallery labels)``: 12 random PNGs of 4 labels indexed."""
    root = tmp_path_factory.mktemp("searcher")
    export = tiny_export(root)
    items = read_items(str(write_gallery(root / "data")), "gallery")
    model = ExportedModel(export)
    features = model.predict_images([read_rgb(item.path) for item in items])
    labels = [item.label for item in items]
    paths = [item.path for item in items]
    GalleryIndex.build(features, labels, paths, model=model_digest(export)).save(root / "index")
    return root, export, root / "index", paths, labels


def searcher(setup, tmp_path, threshold, top_k=3):
    root, export, index_dir, _, _ = setup
    folder = write_search_folder(tmp_path / "search", export, index_dir, top_k, threshold)
    return GallerySearcher(folder, device="cpu")


def noise(seed):
    return np.random.default_rng(seed).integers(0, 256, (20, 20, 3), dtype=np.uint8)


def test_a_gallery_image_gets_its_label_and_an_unseen_one_unknown(setup, tmp_path):
    _, export, _, paths, labels = setup
    threshold = {"score": 0.9999, "similarity": "inner_product", "source": "a test"}
    found = searcher(setup, tmp_path, threshold)
    known, unseen = found.answer([read_rgb(paths[5]), noise(99)])
    assert known["decision"] == labels[5] and known["threshold"] == 0.9999 and "note" not in known
    assert known["matches"][0] == {"id": 5, "path": paths[5], "label": labels[5], "score": pytest.approx(1, abs=1e-5)}
    assert len(known["matches"]) == 3 and known["score"] == known["matches"][0]["score"]
    assert unseen["decision"] == UNKNOWN and unseen["score"] < 0.9999 and len(unseen["matches"]) == 3
    assert [m["score"] for m in unseen["matches"]] == sorted((m["score"] for m in unseen["matches"]), reverse=True)
    assert len(found.answer([noise(1)], top_k=5)[0]["matches"]) == 5


def test_without_a_threshold_every_query_gets_its_best_label_and_a_note(setup, tmp_path):
    (answer,) = searcher(setup, tmp_path, None).answer([noise(7)])
    assert answer["decision"] == answer["matches"][0]["label"] and answer["threshold"] is None
    assert answer["note"] == NO_THRESHOLD


def test_the_threshold_comes_from_predict_threshold_else_the_exports_threshold_json(setup, tmp_path):
    _, export, _, _, _ = setup
    assert choose_threshold(export, None, binary=False) is None
    assert choose_threshold(export, 0.5, binary=False) == {
        "score": 0.5,
        "similarity": "inner_product",
        "source": "predict.threshold",
    }
    calibrated = tmp_path / "calibrated"
    shutil.copytree(export, calibrated)
    with_threshold(calibrated, 0.83)
    chosen = choose_threshold(calibrated, None, binary=False)
    assert chosen["score"] == 0.83 and chosen["target_fmr"] == 1e-3 and "threshold.json" in chosen["source"]
    assert choose_threshold(calibrated, 0.4, binary=False)["score"] == 0.4  # predict.threshold overrides
    with pytest.raises(ConfigError, match="is a inner_product threshold, but the export outputs binary codes"):
        choose_threshold(calibrated, None, binary=True)
    with pytest.raises(ConfigError, match="finite number"):
        choose_threshold(export, float("nan"), binary=False)
    assert choose_threshold(export, 12, binary=True) == {
        "score": 12.0,
        "similarity": "hamming",
        "source": "predict.threshold",
    }


def test_an_index_of_another_model_or_damaged_settings_are_refused(setup, tmp_path):
    root, export, index_dir, _, _ = setup
    other = tiny_export(tmp_path / "other", seed=1)
    folder = write_search_folder(tmp_path / "mixed", other, index_dir, 3, None)
    with pytest.raises(ModelMismatchError, match="Re-index the gallery with this model"):
        GallerySearcher(folder, device="cpu")
    folder = write_search_folder(tmp_path / "bad", export, index_dir, 3, None)
    settings = json.loads((folder / "search.json").read_text())
    for change, message in (
        ({"top_k": 0}, "top_k must be an integer from 1"),
        ({"threshold": {"score": "x"}}, "finite"),
    ):
        (folder / "search.json").write_text(json.dumps({**settings, **change}))
        with pytest.raises(DataError, match=message):
            GallerySearcher(folder, device="cpu")


def test_an_emptied_gallery_answers_unknown(setup, tmp_path):
    root, export, index_dir, _, _ = setup
    index = GalleryIndex.load(index_dir)
    index.remove(index.ids)
    index.save(tmp_path / "empty")
    folder = write_search_folder(tmp_path / "search", export, tmp_path / "empty", 3, None)
    (answer,) = GallerySearcher(folder, device="cpu").answer([noise(3)])
    assert answer["decision"] == UNKNOWN and answer["matches"] == [] and answer["score"] is None
