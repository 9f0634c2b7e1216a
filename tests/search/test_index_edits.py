"""GalleryIndex edits: remove by id (flat and ivf in place, HNSW deleted marks and rebuild), ids that
are never reused, the edit history, the model that embedded the gallery, and format-1 indexes."""

import json
import logging

import faiss
import numpy as np
import pytest

from recog.errors import DataError
from recog.metrics import pack_bits
from recog.search import GalleryIndex, ModelMismatchError, model_digest
from recog.utils import atomic

KINDS = [
    ("flat", False, {}),
    ("ivf", False, {"nlist": 4, "nprobe": 4}),  # every list probed: exact
    ("hnsw", False, {"M": 8, "ef_search": 200}),
    ("flat", True, {}),
    ("ivf", True, {"nlist": 4, "nprobe": 4}),
    ("hnsw", True, {"M": 8, "ef_search": 200}),
]


def gallery(rng, count, binary):
    """Distinct integer vectors (exact float sums) or random codes."""
    if binary:
        return pack_bits(rng.integers(0, 2, (count, 32)))
    return rng.integers(-3, 4, (count, 8)).astype(np.float32)


@pytest.mark.parametrize("kind, binary, params", KINDS)
def test_removed_entries_are_gone_and_the_rest_search_as_a_fresh_index(kind, binary, params):
    rng = np.random.default_rng(0)
    vectors, labels = gallery(rng, 160, binary), rng.integers(0, 9, 160)
    paths = [f"g/{i}.png" for i in range(160)]
    index = GalleryIndex.build(vectors, labels, paths, kind=kind, binary=binary, **params)
    index.rebuild_fraction = 0.5  # HNSW: keep the deleted marks for this test
    gone = [3, 4, 50, 159, 77]
    assert index.remove(gone) == 5
    keep = np.setdiff1d(np.arange(160), gone)
    np.testing.assert_array_equal(index.ids, keep)
    np.testing.assert_array_equal(index.labels, labels[keep])
    assert index.paths == [paths[i] for i in keep] and index.ntotal == 155
    np.testing.assert_array_equal(index.gallery_vectors(), vectors[keep])
    if kind == "hnsw":
        assert index.deleted_fraction == pytest.approx(5 / 160)
    queries = vectors[::9]
    scores, places = index.search(queries, 10)
    assert places.min() >= 0 and not np.isin(index.ids[places], gone).any()
    fresh = GalleryIndex.build(vectors[keep], labels[keep], kind="flat", binary=binary)
    want_scores, want_places = fresh.search(queries, 10)
    if kind == "hnsw":  # approximate: the scores of what it found are right, the best is found
        assert (scores[:, 0] == want_scores[:, 0]).all()
    else:
        np.testing.assert_array_equal(places, want_places)
        np.testing.assert_array_equal(scores, want_scores)


@pytest.mark.parametrize("kind, binary, params", KINDS)
def test_ids_are_never_reused_and_edits_survive_save_and_load(tmp_path, kind, binary, params):
    rng = np.random.default_rng(1)
    vectors = gallery(rng, 60, binary)
    index = GalleryIndex.build(vectors[:40], np.arange(40) % 5, kind=kind, binary=binary, source="a.txt", **params)
    index.rebuild_fraction = 0.9
    index.remove([0, 39])
    index.add(vectors[40:], np.arange(40, 60) % 5, source="more.txt")
    np.testing.assert_array_equal(index.ids, np.r_[1:39, 40:60])  # 39 is not given again
    assert index.next_id == 60
    index.save(tmp_path / "idx")
    loaded = GalleryIndex.load(tmp_path / "idx")
    np.testing.assert_array_equal(loaded.ids, index.ids)
    np.testing.assert_array_equal(loaded.labels, index.labels)
    np.testing.assert_array_equal(loaded.gallery_vectors(), index.gallery_vectors())
    assert loaded.next_id == 60 and loaded.deleted_fraction == index.deleted_fraction
    for got, want in zip(loaded.search(vectors[::7], 4), index.search(vectors[::7], 4)):
        np.testing.assert_array_equal(got, want)
    ops = [(e["op"], e.get("ids"), e.get("source")) for e in loaded.edits]
    assert ops == [("build", None, "a.txt"), ("remove", [0, 39], None), ("add", [40, 59], "more.txt")]
    assert all(e["time"].endswith("+00:00") for e in loaded.edits)
    loaded.remove([40])
    loaded.add(vectors[:1], [0])
    assert loaded.ids[-1] == 60  # ids keep counting after a reload


def test_removing_an_unknown_or_non_integer_id_names_it_and_changes_nothing():
    rng = np.random.default_rng(2)
    index = GalleryIndex.build(gallery(rng, 10, False), np.arange(10))
    index.remove([4])
    with pytest.raises(ValueError, match=r"no gallery entry has id 4, 12 \(9 entries, ids 0\.\.9"):
        index.remove([1, 4, 12])
    with pytest.raises(ValueError, match="must be integers"):
        index.remove(["a"])
    assert index.ntotal == 9 and 1 in index.ids
    assert index.remove([]) == 0


@pytest.mark.parametrize("binary", [False, True])
def test_hnsw_rebuilds_its_graph_once_the_deleted_share_passes_the_fraction(binary):
    rng = np.random.default_rng(3)
    vectors = gallery(rng, 100, binary)
    index = GalleryIndex.build(vectors, np.arange(100), kind="hnsw", binary=binary, M=8, ef_search=128)
    index.rebuild_fraction = 0.2
    index.remove(range(0, 40, 2))  # 20 of 100: at the fraction, not past it
    assert index.deleted_fraction == pytest.approx(0.2) and index.faiss_index.ntotal == 100
    index.remove([1])
    assert index.deleted_fraction == 0 and index.faiss_index.ntotal == 79
    assert [e["op"] for e in index.edits][-2:] == ["remove", "rebuild"]
    keep = np.setdiff1d(np.arange(100), [*range(0, 40, 2), 1])
    np.testing.assert_array_equal(index.ids, keep)
    np.testing.assert_array_equal(index.gallery_vectors(), vectors[keep])
    scores, _ = index.search(vectors[keep], 1)
    best, _ = GalleryIndex.build(vectors[keep], binary=binary).search(vectors[keep], 1)
    assert np.mean(scores == best) > 0.9  # the rebuilt graph finds the best match (approximate search)


def test_an_edit_that_fails_to_save_leaves_the_saved_index_as_it_was(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    index = GalleryIndex.build(gallery(rng, 20, False), np.arange(20))
    index.save(tmp_path / "idx")
    before = {p.name: p.read_bytes() for p in (tmp_path / "idx").iterdir()}
    index.remove([5])
    real_write = atomic.write_file

    def disk_full(path, data):
        if str(path).endswith("manifest.json"):
            raise OSError(28, "No space left on device")
        return real_write(path, data)

    monkeypatch.setattr(atomic, "write_file", disk_full)
    with pytest.raises(atomic.StorageError):
        index.save(tmp_path / "idx")
    assert {p.name: p.read_bytes() for p in (tmp_path / "idx").iterdir()} == before
    assert GalleryIndex.load(tmp_path / "idx").ntotal == 20


def test_the_index_records_its_model_and_refuses_another_models_features(tmp_path, caplog):
    export_a, export_b = tmp_path / "a", tmp_path / "b"
    for folder, text in ((export_a, "a"), (export_b, "b")):
        folder.mkdir()
        (folder / "manifest.json").write_text(json.dumps({"files": {"inference.pdiparams": text}}))
    rng = np.random.default_rng(5)
    index = GalleryIndex.build(gallery(rng, 10, False), model=model_digest(export_a))
    index.save(tmp_path / "idx")
    loaded = GalleryIndex.load(tmp_path / "idx")
    assert loaded.model == model_digest(export_a) and len(loaded.model) == 64
    loaded.check_model(model_digest(export_a))
    with pytest.raises(ModelMismatchError, match="built with another model") as error:
        loaded.check_model(model_digest(export_b), tmp_path / "idx", export_b)
    assert f"stage=index index.dir={tmp_path / 'idx'} index.model_dir={export_b}" in str(error.value)
    with caplog.at_level(logging.WARNING):
        GalleryIndex.build(gallery(rng, 3, False)).check_model(model_digest(export_a))
    assert "records no model" in caplog.text


def test_a_format_1_index_loads_with_ids_and_can_be_edited(tmp_path):
    rng = np.random.default_rng(6)
    vectors = gallery(rng, 12, False)
    flat = faiss.IndexFlatIP(8)
    flat.add(vectors)
    (tmp_path / "old").mkdir()
    faiss.write_index(flat, str(tmp_path / "old" / "index.faiss"))
    manifest = {
        "format": "recog.gallery_index",
        "version": 1,
        "kind": "flat",
        "binary": False,
        "metric": "inner_product",
        "dim": 8,
        "count": 12,
        "params": {},
        "index_file": "index.faiss",
        "labels": list(range(12)),
        "paths": None,
    }
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(manifest))
    index = GalleryIndex.load(tmp_path / "old")
    np.testing.assert_array_equal(index.ids, np.arange(12))
    assert index.model is None and index.edits == []
    index.remove([0])
    _, places = index.search(vectors[1:2], 1)
    assert index.ids[places[0, 0]] == 1
    index.save(tmp_path / "old")
    assert json.loads((tmp_path / "old" / "manifest.json").read_text())["version"] == 2


def test_an_altered_index_file_is_refused_before_faiss_reads_it(tmp_path):
    rng = np.random.default_rng(7)
    GalleryIndex.build(gallery(rng, 10, False)).save(tmp_path / "idx")
    data = bytearray((tmp_path / "idx" / "index.faiss").read_bytes())
    data[-5] ^= 0xFF  # one flipped byte in a stored vector: faiss would read it without a word
    (tmp_path / "idx" / "index.faiss").write_bytes(bytes(data))
    with pytest.raises(DataError, match="index.faiss was altered"):
        GalleryIndex.load(tmp_path / "idx")
