"""stage=predict: streaming extraction with skipped bad files, gallery search and its growth."""

import json

import cv2
import numpy as np
import pytest

import recog
from recog.errors import DataError, RecogError
from recog.inference import ExportedModel, preprocess_image
from recog.search import GalleryIndex
from recog.stages import predict


@pytest.fixture(scope="module")
def export_dir(exported):
    return exported[0]  # tests/conftest.py


def _images(folder, count, seed, label_of=lambda i: i % 3):
    """PNG files of 3 synthetic classes (a bright square at a class-specific place) and a list."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(count):
        image = (rng.random((20, 20, 3)) * 40).astype(np.uint8)
        c = label_of(i)
        image[2 + 5 * c : 8 + 5 * c, 4:16] = 255
        cv2.imwrite(str(folder / f"{i:03d}.png"), image)
        lines.append(f"{folder.name}/{i:03d}.png {c}")
    (folder.parent / f"{folder.name}.txt").write_text("\n".join(lines) + "\n")
    return folder.parent / f"{folder.name}.txt"


def _cfg(tmp_path, export_dir, *overrides):
    return recog.compose(
        [f"paths.output_root={tmp_path}", "mlflow.enabled=false", f"predict.model_dir={export_dir}", *overrides]
    )


@pytest.mark.slow
def test_folder_with_corrupt_and_non_image_files_is_extracted_and_both_are_named(tmp_path, export_dir):
    _images(tmp_path / "imgs", 5, seed=0)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "imgs" / "notes.jpg").write_text("not an image at all")
    summary = predict.run(
        _cfg(tmp_path, export_dir, f"predict.input={tmp_path / 'imgs'}", "predict.batch_size=3"), tmp_path / "out"
    )
    assert summary == {"images": 7, "extracted": 5, "failed": 2}
    features = np.load(tmp_path / "out" / "features.npy")
    manifest = (tmp_path / "out" / "manifest.tsv").read_text().splitlines()
    failed = (tmp_path / "out" / "failed.txt").read_text()
    assert features.shape == (5, 24) and len(manifest) == 5 and "broken.png" in failed and "notes.jpg" in failed
    # Row i is the image on manifest line i, exactly as the predictor computes it alone.
    model = ExportedModel(export_dir)
    path = manifest[3].split("\t")[0]
    alone = model.predict(preprocess_image(cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB), model.preprocess)[None])
    np.testing.assert_allclose(features[3], alone[0], atol=1e-5)


@pytest.mark.slow
def test_gallery_search_results_metrics_and_picture(tmp_path, export_dir):
    queries, gallery = _images(tmp_path / "q", 6, seed=1), _images(tmp_path / "g", 9, seed=2)
    cfg = _cfg(
        tmp_path,
        export_dir,
        f"predict.input={queries}",
        f"predict.gallery={gallery}",
        "predict.top_k=4",
        "predict.picture_queries=3",
    )
    summary = predict.run(cfg, tmp_path / "out")
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(results) == 6 and all(len(r["results"]) == 4 for r in results)
    # Against NumPy brute force on the saved features: inner product, ties by lower index.
    q = np.load(tmp_path / "out" / "features.npy")
    index = GalleryIndex.load(tmp_path / "out" / "gallery")
    g = index.gallery_vectors()
    scores = q @ g.T
    for i, row in enumerate(results):
        expected = sorted(range(len(g)), key=lambda j: (-scores[i, j], j))[:4]
        assert [r["index"] for r in row["results"]] == expected
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics == recog.metrics.retrieval_metrics(q, [r["label"] for r in results], g, index.labels.tolist())
    assert summary["metrics"] == metrics
    picture = cv2.imread(str(tmp_path / "out" / "retrieval.png"))
    assert picture is not None and picture.shape[0] * 5 == picture.shape[1] * 3  # 3 rows of 1 + 4 tiles


@pytest.mark.slow
def test_adding_to_a_gallery_extracts_only_new_images_and_equals_a_rebuild(tmp_path, export_dir, monkeypatch):
    queries = _images(tmp_path / "q", 3, seed=1)
    gallery = _images(tmp_path / "g", 8, seed=2)
    lines = gallery.read_text().splitlines()
    (tmp_path / "first.txt").write_text("\n".join(lines[:5]) + "\n")
    index_dir = tmp_path / "index"
    base = [f"predict.input={queries}", f"predict.index_dir={index_dir}"]
    predict.run(_cfg(tmp_path, export_dir, *base, f"predict.gallery={tmp_path / 'first.txt'}"), tmp_path / "a")

    extracted = []
    real_extract = predict.extract
    monkeypatch.setattr(
        predict, "extract", lambda model, items, *a: extracted.append(len(items)) or real_extract(model, items, *a)
    )
    predict.run(_cfg(tmp_path, export_dir, *base, f"predict.gallery={gallery}"), tmp_path / "b")
    assert extracted == [3, 3]  # the 3 queries, then only the 3 new gallery images
    grown = GalleryIndex.load(index_dir)
    predict.run(
        _cfg(
            tmp_path,
            export_dir,
            f"predict.input={queries}",
            f"predict.gallery={gallery}",
            f"predict.index_dir={tmp_path / 'rebuilt'}",
        ),
        tmp_path / "c",
    )
    rebuilt = GalleryIndex.load(tmp_path / "rebuilt")
    assert grown.paths == rebuilt.paths and grown.ntotal == 8
    # Batches of 5 + 3 images vs one of 8: the predictor's kernels may differ in the last bits by batch size.
    np.testing.assert_allclose(grown.gallery_vectors(), rebuilt.gallery_vectors(), rtol=0, atol=1e-6)
    assert _rounded(json.loads((tmp_path / "b" / "results.json").read_text())) == _rounded(
        json.loads((tmp_path / "c" / "results.json").read_text())
    )


def _rounded(value, digits: int = 5):
    """``value`` (parsed JSON) with every float rounded: the same ranking, scores equal to ``digits`` places."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, list):
        return [_rounded(v, digits) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    return value


@pytest.mark.slow
def test_bad_input_is_a_clear_error(tmp_path, export_dir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        predict.run(_cfg(tmp_path, export_dir, f"predict.input={tmp_path / 'empty'}"), tmp_path / "out")
    with pytest.raises(RecogError, match="preprocess.json|not an export|export"):
        predict.run(_cfg(tmp_path, tmp_path / "empty", f"predict.input={tmp_path / 'empty'}"), tmp_path / "out")
    (tmp_path / "bad.txt").write_text("a.png 1\nb.png one\n")
    with pytest.raises(DataError, match="line 2"):
        predict.run(_cfg(tmp_path, export_dir, f"predict.input={tmp_path / 'bad.txt'}"), tmp_path / "out")
    with pytest.raises(recog.errors.ConfigError, match="predict.input"):
        predict.run(_cfg(tmp_path, export_dir), tmp_path / "out")


# ---------------------------------------------------------------- unlabelled queries, list files


def test_unlabelled_queries_with_a_gallery_get_results_and_no_metrics(tmp_path, export_dir):
    _images(tmp_path / "q", 4, seed=1)
    gallery = _images(tmp_path / "g", 6, seed=2)
    cfg = _cfg(tmp_path, export_dir, f"predict.input={tmp_path / 'q'}", f"predict.gallery={gallery}", "predict.top_k=3")
    summary = predict.run(cfg, tmp_path / "out")  # a folder: no labels
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(results) == 4 and all(r["label"] is None and len(r["results"]) == 3 for r in results)
    assert all(item["label"] is not None for r in results for item in r["results"])  # the gallery's labels
    assert not (tmp_path / "out" / "metrics.json").exists() and "metrics" not in summary
    assert (tmp_path / "out" / "retrieval.png").is_file()


def test_mixed_labelled_and_unlabelled_queries_get_results_their_labels_and_no_metrics(tmp_path, export_dir, caplog):
    queries = _images(tmp_path / "q", 4, seed=1)
    lines = queries.read_text().splitlines()
    queries.write_text("\n".join([lines[0].split()[0]] + lines[1:]) + "\n")  # the first line without a label
    gallery = _images(tmp_path / "g", 6, seed=2)
    with caplog.at_level("WARNING"):
        predict.run(
            _cfg(tmp_path, export_dir, f"predict.input={queries}", f"predict.gallery={gallery}"), tmp_path / "out"
        )
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["label"] for r in results] == [None, 1, 2, 0]
    assert not (tmp_path / "out" / "metrics.json").exists()
    assert "1 of 4 queries have no label: no metrics" in caplog.text


def test_list_with_a_byte_order_mark_keeps_its_first_image(tmp_path, export_dir):
    queries = _images(tmp_path / "q", 3, seed=1)
    queries.write_bytes(b"\xef\xbb\xbf" + queries.read_bytes())
    summary = predict.run(_cfg(tmp_path, export_dir, f"predict.input={queries}"), tmp_path / "out")
    assert summary == {"images": 3, "extracted": 3, "failed": 0}
    assert (tmp_path / "out" / "manifest.tsv").read_text().splitlines()[0].endswith("q/000.png\t0")


def test_latin1_list_is_one_message_with_line_numbers(tmp_path, export_dir):
    _images(tmp_path / "q", 3, seed=1)
    (tmp_path / "latin1.txt").write_bytes("q/000.png 0\nq/caf\u00e9.png 1\nq/001.png 1\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.txt: it is not UTF-8 text, line\(s\) 2 cannot be decoded"):
        predict.run(_cfg(tmp_path, export_dir, f"predict.input={tmp_path / 'latin1.txt'}"), tmp_path / "out")


def test_duplicate_gallery_lines_are_reported(tmp_path, export_dir):
    queries = _images(tmp_path / "q", 2, seed=1)
    gallery = _images(tmp_path / "g", 3, seed=2)
    gallery.write_text(gallery.read_text() + "g/001.png 1\n")
    with pytest.raises(DataError, match=r"line 4: 'g/001.png' is listed again \(first on line 2\)"):
        predict.run(
            _cfg(tmp_path, export_dir, f"predict.input={queries}", f"predict.gallery={gallery}"), tmp_path / "out"
        )


@pytest.mark.parametrize("path", ["../outside.png", "/etc/passwd"])
def test_list_paths_outside_the_lists_folder_are_refused(tmp_path, export_dir, path):
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "q.txt").write_text(f"{path} 0\n")
    with pytest.raises(DataError, match="refused"):
        predict.run(_cfg(tmp_path, export_dir, f"predict.input={tmp_path / 'lists' / 'q.txt'}"), tmp_path / "out")


def test_extending_a_labelled_index_with_unlabelled_images_is_a_message(tmp_path, export_dir):
    queries = _images(tmp_path / "q", 2, seed=1)
    gallery = _images(tmp_path / "g", 4, seed=2)
    index_dir = tmp_path / "index"
    predict.run(
        _cfg(
            tmp_path,
            export_dir,
            f"predict.input={queries}",
            f"predict.gallery={gallery}",
            f"predict.index_dir={index_dir}",
        ),
        tmp_path / "a",
    )
    _images(tmp_path / "more", 2, seed=3)
    with pytest.raises(DataError, match="has labels, the new images"):
        predict.run(
            _cfg(
                tmp_path,
                export_dir,
                f"predict.input={queries}",
                f"predict.gallery={tmp_path / 'more'}",
                f"predict.index_dir={index_dir}",
            ),
            tmp_path / "b",
        )
