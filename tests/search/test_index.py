"""GalleryIndex: exact search against a NumPy brute force (with ties), incremental add, save/load,
metrics, JSON results, and the approximate kinds on clustered data."""

import json

import numpy as np
import pytest

from recog.errors import RecogError
from recog.metrics import hamming_metrics, pack_bits, retrieval_metrics
from recog.search import GalleryIndex, IndexConfigError


def brute_force_ip(queries, gallery, k):
    """Top-k by inner product descending, ties by lower index (float64: exact for small ints)."""
    scores = queries.astype(np.float64) @ gallery.astype(np.float64).T
    order = np.stack([np.lexsort((np.arange(len(gallery)), -row)) for row in scores])[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def brute_force_hamming(query_codes, gallery_codes, k):
    q = np.unpackbits(query_codes, axis=1).astype(np.int64)
    g = np.unpackbits(gallery_codes, axis=1).astype(np.int64)
    dist = (q[:, None, :] != g[None, :, :]).sum(-1)
    order = np.stack([np.lexsort((np.arange(len(g)), row)) for row in dist])[:, :k]
    return np.take_along_axis(dist, order, axis=1), order


def int_features(rng, n, d=6, low=-1, high=2):
    return rng.integers(low, high, (n, d)).astype(np.float32)


def boundary_tie_rows(sorted_scores, k):
    """Rows whose k-th and (k+1)-th best scores are equal (a tie across the cut)."""
    return int(np.sum(sorted_scores[:, k - 1] == sorted_scores[:, k]))


# ---------------------------------------------------------------------- exact search


@pytest.mark.parametrize("num_queries", [1, 7, 64])
def test_flat_real_search_equals_brute_force_with_ties(num_queries):
    rng = np.random.default_rng(0)
    gallery = int_features(rng, 400)
    queries = int_features(rng, num_queries)
    index = GalleryIndex.build(gallery, kind="flat")
    full_scores, _ = brute_force_ip(queries, gallery, len(gallery))
    for k in (1, 3, 10, 57, 399, 400):
        scores, indices = index.search(queries, k)
        ref_scores, ref_indices = brute_force_ip(queries, gallery, k)
        assert scores.shape == indices.shape == (num_queries, k)
        assert scores.dtype == np.float32 and indices.dtype == np.int64
        np.testing.assert_array_equal(indices, ref_indices, err_msg=f"k={k}")
        np.testing.assert_array_equal(scores, ref_scores.astype(np.float32))
        if k < len(gallery) and num_queries > 1:
            # The data really have ties across the k-th place (else the test proves little).
            assert boundary_tie_rows(full_scores, k) > 0


def test_flat_search_past_the_gallery_end_is_padded():
    rng = np.random.default_rng(1)
    gallery = int_features(rng, 20)
    scores, indices = GalleryIndex.build(gallery).search(gallery[:3], 25)
    ref_scores, ref_indices = brute_force_ip(gallery[:3], gallery, 20)
    np.testing.assert_array_equal(indices[:, :20], ref_indices)
    np.testing.assert_array_equal(scores[:, :20], ref_scores)
    assert (indices[:, 20:] == -1).all() and np.isneginf(scores[:, 20:]).all()


def test_all_equal_scores_are_ordered_by_index():
    gallery = np.ones((300, 4), np.float32)  # every score ties
    scores, indices = GalleryIndex.build(gallery).search(np.ones((5, 4), np.float32), 10)
    np.testing.assert_array_equal(indices, np.tile(np.arange(10), (5, 1)))
    assert (scores == 4).all()


def test_binary_flat_search_equals_hamming_brute_force_with_ties():
    rng = np.random.default_rng(2)
    codes = pack_bits(rng.integers(0, 2, (500, 16)))
    queries = pack_bits(rng.integers(0, 2, (40, 16)))
    index = GalleryIndex.build(codes, binary=True)
    assert index.dim == 16
    full, _ = brute_force_hamming(queries, codes, len(codes))
    for k in (1, 4, 25, 500):
        scores, indices = index.search(queries, k)
        ref_scores, ref_indices = brute_force_hamming(queries, codes, k)
        assert scores.dtype == np.int32
        np.testing.assert_array_equal(indices, ref_indices, err_msg=f"k={k}")
        np.testing.assert_array_equal(scores, ref_scores)
        if k < len(codes):
            assert boundary_tie_rows(full, k) > 0


def test_exclude_self_removes_each_querys_own_entry():
    rng = np.random.default_rng(3)
    gallery = int_features(rng, 150)
    gallery[10] = gallery[11]  # a duplicate: the other copy must stay in the ranking
    index = GalleryIndex.build(gallery)
    k = 8
    scores, indices = index.search(gallery, k, exclude_self=True)
    raw = gallery.astype(np.float64) @ gallery.astype(np.float64).T
    for i in range(len(gallery)):
        others = np.delete(np.arange(len(gallery)), i)
        row = raw[i, others]
        expected = others[np.lexsort((others, -row))][:k]
        np.testing.assert_array_equal(indices[i], expected)
        assert i not in indices[i]
    assert 11 in indices[10] and 10 in indices[11]
    with pytest.raises(ValueError, match="exclude_self"):
        index.search(gallery[:5], k, exclude_self=True)


# ---------------------------------------------------------------------- incremental add


@pytest.mark.parametrize("binary", [False, True])
def test_incremental_add_equals_full_rebuild(tmp_path, binary):
    rng = np.random.default_rng(4)
    if binary:
        vectors = pack_bits(rng.integers(0, 2, (240, 24)))
        queries = pack_bits(rng.integers(0, 2, (30, 24)))
    else:
        vectors = int_features(rng, 240)
        queries = int_features(rng, 30)
    labels = rng.integers(0, 12, 240)
    paths = [f"img/{i:04d}.jpg" for i in range(240)]
    full = GalleryIndex.build(vectors, labels, paths, binary=binary)
    half = GalleryIndex.build(vectors[:120], labels[:120], paths[:120], binary=binary)
    assert half.ntotal == 120
    assert half.add(vectors[120:], labels[120:], paths[120:]) is half
    assert half.ntotal == full.ntotal == 240
    np.testing.assert_array_equal(half.labels, full.labels)
    assert half.paths == full.paths
    for k in (1, 5, 40):
        for got, want in zip(half.search(queries, k), full.search(queries, k)):
            np.testing.assert_array_equal(got, want)
    half.save(tmp_path / "half")
    full.save(tmp_path / "full")
    half_manifest = json.loads((tmp_path / "half" / "manifest.json").read_text())
    full_manifest = json.loads((tmp_path / "full" / "manifest.json").read_text())
    assert [e["op"] for e in half_manifest.pop("edits")] == ["build", "add"]  # the history differs
    assert [e["op"] for e in full_manifest.pop("edits")] == ["build"]
    assert half_manifest == full_manifest
    assert half_manifest["count"] == 240 and half_manifest["paths"][-1] == "img/0239.jpg"
    assert (tmp_path / "half" / "index.faiss").read_bytes() == (tmp_path / "full" / "index.faiss").read_bytes()


def test_add_checks_labels_paths_and_sizes():
    rng = np.random.default_rng(5)
    index = GalleryIndex.build(int_features(rng, 10), labels=np.arange(10))
    with pytest.raises(ValueError, match="give labels"):
        index.add(int_features(rng, 2))
    with pytest.raises(ValueError, match="no paths"):
        index.add(int_features(rng, 2), labels=[1, 2], paths=["a", "b"])
    with pytest.raises(ValueError, match="size 5"):
        index.add(int_features(rng, 2, d=5), labels=[1, 2])
    with pytest.raises(ValueError, match="string"):
        index.add(int_features(rng, 2), labels=["a", "b"])
    assert index.ntotal == 10 and len(index.labels) == 10  # failed adds change nothing
    index.add(int_features(rng, 2), labels=[1, 2])
    assert index.ntotal == 12 and index.labels.tolist()[-2:] == [1, 2]


# ---------------------------------------------------------------------- save / load


def clustered(rng, num_clusters=20, per_cluster=50, dim=32, noise=0.15):
    centres = rng.standard_normal((num_clusters, dim))
    labels = np.repeat(np.arange(num_clusters), per_cluster)
    x = centres[labels] + noise * rng.standard_normal((len(labels), dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


@pytest.mark.parametrize(
    "kind, binary, params",
    [
        ("flat", False, {}),
        ("ivf", False, {"nlist": 10, "nprobe": 3}),
        ("hnsw", False, {"M": 16, "ef_search": 48}),
        ("flat", True, {}),
        ("ivf", True, {"nlist": 8, "nprobe": 2}),
        ("hnsw", True, {"m": 8, "ef_search": 40}),
    ],
)
def test_save_load_round_trip(tmp_path, kind, binary, params):
    rng = np.random.default_rng(6)
    features, labels = clustered(rng, per_cluster=30)
    vectors = pack_bits(features > 0) if binary else features
    paths = [f"gallery/{i}.png" for i in range(len(vectors))]
    index = GalleryIndex.build(vectors, labels, paths, kind=kind, binary=binary, **params)
    saved = index.save(tmp_path / "idx")
    assert sorted(p.name for p in saved.iterdir()) == ["index.faiss", "manifest.json"]
    loaded = GalleryIndex.load(tmp_path / "idx")
    assert (loaded.kind, loaded.binary, loaded.dim, loaded.ntotal) == (kind, binary, index.dim, len(vectors))
    assert loaded.params == index.params
    for name, value in params.items():
        assert loaded.params["M" if name == "m" else name] == value
    np.testing.assert_array_equal(loaded.labels, labels)
    assert loaded.paths == paths
    np.testing.assert_array_equal(loaded.gallery_vectors(), vectors)
    queries = vectors[::7]
    for got, want in zip(loaded.search(queries, 5), index.search(queries, 5)):
        np.testing.assert_array_equal(got, want)
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["version"] == 2 and manifest["metric"] == ("hamming" if binary else "inner_product")


def test_load_without_labels_or_paths(tmp_path):
    rng = np.random.default_rng(7)
    gallery = int_features(rng, 30)
    GalleryIndex.build(gallery).save(tmp_path / "bare")
    loaded = GalleryIndex.load(tmp_path / "bare")
    assert loaded.labels is None and loaded.paths is None and loaded.ntotal == 30
    entry = loaded.results(gallery[:1], 2)[0]
    assert entry["query"] is None and entry["label"] is None
    assert all(r["path"] is None and r["label"] is None for r in entry["results"])


def _corrupt(directory, how):
    manifest_path = directory / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    if how == "no manifest":
        manifest_path.unlink()
    elif how == "manifest not json":
        manifest_path.write_text("{ not json")
    elif how == "manifest not an object":
        manifest_path.write_text("[1, 2]")
    elif how == "wrong version":
        manifest["version"] = 99
        manifest_path.write_text(json.dumps(manifest))
    elif how == "bad kind":
        manifest["kind"] = "lsh"
        manifest_path.write_text(json.dumps(manifest))
    elif how == "count mismatch":
        manifest["count"] += 1
        manifest["labels"].append(0)
        manifest["paths"].append("extra.jpg")
        manifest_path.write_text(json.dumps(manifest))
    elif how == "labels mismatch":
        manifest["labels"].pop()
        manifest_path.write_text(json.dumps(manifest))
    elif how == "paths mismatch":
        manifest["paths"] = manifest["paths"][:3]
        manifest_path.write_text(json.dumps(manifest))
    elif how == "dim mismatch":
        manifest["dim"] += 1
        manifest_path.write_text(json.dumps(manifest))
    elif how == "binary flag flipped":
        manifest["binary"] = True
        manifest_path.write_text(json.dumps(manifest))
    elif how == "kind mismatch":
        manifest["kind"] = "hnsw"
        manifest["params"] = {}
        manifest_path.write_text(json.dumps(manifest))
    elif how == "no index file":
        (directory / "index.faiss").unlink()
    elif how == "index file garbage":
        (directory / "index.faiss").write_bytes(b"garbage" * 10)
    elif how == "index file truncated":
        data = (directory / "index.faiss").read_bytes()
        (directory / "index.faiss").write_bytes(data[: len(data) // 2])
    else:
        raise AssertionError(how)


@pytest.mark.parametrize(
    "how",
    [
        "no manifest",
        "manifest not json",
        "manifest not an object",
        "wrong version",
        "bad kind",
        "count mismatch",
        "labels mismatch",
        "paths mismatch",
        "dim mismatch",
        "binary flag flipped",
        "kind mismatch",
        "no index file",
        "index file garbage",
        "index file truncated",
    ],
)
def test_load_bad_directory_raises_recog_error(tmp_path, how):
    rng = np.random.default_rng(8)
    directory = tmp_path / "idx"
    GalleryIndex.build(int_features(rng, 40), np.arange(40) % 4, [f"{i}.jpg" for i in range(40)]).save(directory)
    GalleryIndex.load(directory)  # intact: loads
    _corrupt(directory, how)
    with pytest.raises(RecogError, match="gallery index"):
        GalleryIndex.load(directory)


def test_load_missing_directory_raises_recog_error(tmp_path):
    with pytest.raises(RecogError, match="no such directory"):
        GalleryIndex.load(tmp_path / "nowhere")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(RecogError):
        GalleryIndex.load(tmp_path / "a_file")


def test_save_overwrites_an_older_index(tmp_path):
    rng = np.random.default_rng(9)
    GalleryIndex.build(int_features(rng, 10)).save(tmp_path / "idx")
    GalleryIndex.build(int_features(rng, 25), labels=np.arange(25)).save(tmp_path / "idx")
    loaded = GalleryIndex.load(tmp_path / "idx")
    assert loaded.ntotal == 25 and loaded.labels is not None
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "idx").iterdir())


# ---------------------------------------------------------------------- metrics


def test_metrics_equal_retrieval_metrics_for_every_kind():
    rng = np.random.default_rng(10)
    gallery, labels = clustered(rng, noise=0.6)
    queries = gallery[::10] + 0.05 * rng.standard_normal((100, 32)).astype(np.float32)
    query_labels = labels[::10]
    expected = retrieval_metrics(queries, query_labels, gallery, labels, recall_at=(1, 5, 10))
    expected_self = retrieval_metrics(gallery, labels, recall_at=(1, 5, 10))
    assert expected["recall_at_1"] > 0.5  # a meaningful comparison
    for kind in ("flat", "ivf", "hnsw"):
        index = GalleryIndex.build(gallery, labels, kind=kind)
        assert index.metrics(queries, query_labels, recall_at=(1, 5, 10)) == expected
        assert index.metrics(recall_at=(1, 5, 10)) == expected_self
    # The approximate ivf search with a single probe differs from exact, the metrics do not.
    ivf = GalleryIndex.build(gallery, labels, kind="ivf", nlist=25, nprobe=1)
    assert ivf.metrics(queries, query_labels, recall_at=(2, 3)) == retrieval_metrics(
        queries, query_labels, gallery, labels, recall_at=(2, 3)
    )


def test_binary_metrics_equal_hamming_metrics():
    rng = np.random.default_rng(12)
    bits = rng.integers(0, 2, (200, 20))
    labels = rng.integers(0, 6, 200)
    query_bits = bits[:30] ^ (rng.random((30, 20)) < 0.1)
    index = GalleryIndex.build(pack_bits(bits), labels, binary=True)
    assert index.dim == 24  # 20 bits padded to 3 bytes: Hamming distances unchanged
    got = index.metrics(pack_bits(query_bits), labels[:30], recall_at=(1, 5))
    assert got == hamming_metrics(query_bits, labels[:30], bits, labels, recall_at=(1, 5))
    assert index.metrics(recall_at=(1, 5)) == hamming_metrics(bits, labels, recall_at=(1, 5))


def test_metrics_need_labels():
    rng = np.random.default_rng(13)
    index = GalleryIndex.build(int_features(rng, 10))
    with pytest.raises(ValueError, match="no labels"):
        index.metrics(int_features(rng, 2), [0, 1])
    labelled = GalleryIndex.build(int_features(rng, 10), labels=np.arange(10))
    with pytest.raises(ValueError, match="both"):
        labelled.metrics(int_features(rng, 2), None)


# ---------------------------------------------------------------------- results JSON


def test_results_json_structure():
    rng = np.random.default_rng(14)
    gallery = int_features(rng, 50)
    labels = rng.integers(0, 3, 50)
    paths = [f"g/{i}.jpg" for i in range(50)]
    index = GalleryIndex.build(gallery, labels, paths)
    queries = int_features(rng, 4)
    out = index.results(queries, 3, query_paths=[f"q/{i}.jpg" for i in range(4)], query_labels=[0, 1, 2, 0])
    decoded = json.loads(json.dumps(out))
    assert decoded == out
    scores, indices = index.search(queries, 3)
    assert [entry["query"] for entry in out] == [f"q/{i}.jpg" for i in range(4)]
    assert [entry["label"] for entry in out] == [0, 1, 2, 0]
    for q, entry in enumerate(out):
        assert set(entry) == {"query", "label", "results"}
        assert [r["rank"] for r in entry["results"]] == [1, 2, 3]
        for r, score, i in zip(entry["results"], scores[q], indices[q]):
            assert set(r) == {"rank", "index", "path", "label", "score"}
            assert r["index"] == i and r["path"] == paths[i] and r["label"] == labels[i]
            assert isinstance(r["label"], int) and isinstance(r["score"], float)
            assert r["score"] == score
    # Past the gallery's end the empty places are left out; binary scores are ints.
    codes = pack_bits(rng.integers(0, 2, (4, 8)))
    binary_out = GalleryIndex.build(codes, binary=True).results(codes[:1], 10)
    assert len(binary_out[0]["results"]) == 4
    assert all(isinstance(r["score"], int) for r in binary_out[0]["results"])
    assert binary_out[0]["results"][0] == {"rank": 1, "index": 0, "path": None, "label": None, "score": 0}


def test_results_with_string_labels_round_trip(tmp_path):
    rng = np.random.default_rng(15)
    gallery = int_features(rng, 12)
    labels = np.array(["cat", "dog", "fox"])[np.arange(12) % 3]
    index = GalleryIndex.build(gallery, labels)
    index.save(tmp_path / "idx")
    loaded = GalleryIndex.load(tmp_path / "idx")
    got = loaded.results(gallery[:2], 2, query_labels=["cat", "dog"])
    assert got == index.results(gallery[:2], 2, query_labels=["cat", "dog"])
    assert got[0]["results"][0]["label"] in {"cat", "dog", "fox"}


# ---------------------------------------------------------------------- approximate kinds


@pytest.mark.parametrize(
    "kind, params",
    [
        ("ivf", {"nlist": 20, "nprobe": 4}),
        ("ivf", {}),
        ("hnsw", {"M": 16, "ef_search": 32}),
    ],
)
def test_approximate_real_kinds_find_self(kind, params):
    rng = np.random.default_rng(16)
    gallery, labels = clustered(rng)
    index = GalleryIndex.build(gallery, labels, kind=kind, **params)
    scores, indices = index.search(gallery, 5)
    recall_self = np.mean(indices[:, 0] == np.arange(len(gallery)))
    assert recall_self >= 0.9, recall_self
    # Neighbours are from the query's cluster, and rows are sorted best first.
    assert np.mean(labels[indices] == labels[:, None]) >= 0.9
    assert (np.diff(scores, axis=1) <= 0).all()


@pytest.mark.parametrize("kind, params", [("ivf", {"nlist": 10, "nprobe": 3}), ("hnsw", {"M": 16})])
def test_approximate_binary_kinds_find_self(kind, params):
    rng = np.random.default_rng(17)
    centres = rng.integers(0, 2, (20, 64))
    labels = np.repeat(np.arange(20), 40)
    bits = centres[labels] ^ (rng.random((800, 64)) < 0.05)
    codes = pack_bits(bits)
    index = GalleryIndex.build(codes, labels, kind=kind, binary=True, **params)
    scores, indices = index.search(codes, 3)
    assert np.mean(indices[:, 0] == np.arange(len(codes))) >= 0.9
    assert (scores[:, 0] == 0).mean() >= 0.9
    assert (np.diff(scores, axis=1) >= 0).all()


def test_set_search_params_and_ivf_exact_with_all_lists_probed():
    rng = np.random.default_rng(18)
    gallery = int_features(rng, 600, d=8)
    queries = int_features(rng, 20, d=8)
    index = GalleryIndex.build(gallery, kind="ivf", nlist=8, nprobe=1)
    index.set_search_params(nprobe=8)  # every list probed: exact, with the tie order
    assert index.params["nprobe"] == 8 and index.faiss_index.nprobe == 8
    for k in (1, 10, 30):
        np.testing.assert_array_equal(index.search(queries, k)[1], brute_force_ip(queries, gallery, k)[1])
    with pytest.raises(IndexConfigError, match="ef_search"):
        index.set_search_params(ef_search=10)


# ---------------------------------------------------------------------- argument checks


def test_build_rejects_bad_arguments():
    rng = np.random.default_rng(19)
    gallery = int_features(rng, 50)
    with pytest.raises(IndexConfigError, match="unknown gallery index kind"):
        GalleryIndex.build(gallery, kind="lsh")
    with pytest.raises(RecogError):  # IndexConfigError is a ConfigError (RecogError)
        GalleryIndex.build(gallery, kind="flat", nprobe=3)
    with pytest.raises(IndexConfigError, match="nlist"):
        GalleryIndex.build(gallery, kind="ivf", nlist=80)
    with pytest.raises(IndexConfigError, match="positive integer"):
        GalleryIndex.build(gallery, kind="hnsw", ef_search=0)
    with pytest.raises(ValueError, match="bit-packed uint8"):
        GalleryIndex.build(gallery, binary=True)
    with pytest.raises(ValueError, match="float"):
        GalleryIndex.build(gallery.astype(np.int64))
    with pytest.raises(ValueError, match="empty"):
        GalleryIndex.build(np.zeros((0, 4), np.float32))
    with pytest.raises(ValueError, match="labels"):
        GalleryIndex.build(gallery, labels=np.arange(49))
    with pytest.raises(ValueError, match="paths"):
        GalleryIndex.build(gallery, paths=["a.jpg"])
    bad = gallery.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="nan"):
        GalleryIndex.build(bad)
    index = GalleryIndex.build(gallery)
    with pytest.raises(ValueError, match="size"):
        index.search(int_features(rng, 2, d=5), 3)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        index.search(gallery[:2], 0)
