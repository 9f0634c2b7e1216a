"""Binary codes: binarize, pack/unpack, and Hamming-ranking metrics against a brute force."""

import warnings

import numpy as np
import pytest

from recog.metrics import binarize, hamming_metrics, pack_bits, retrieval_metrics, unpack_bits

KS = (1, 2, 5, 10)


def brute_force(qc, ql, gc=None, gl=None, ks=KS):
    """Explicit Hamming distances, sorted() by (distance, index), explicit AP / INP loops."""
    self_match = gc is None
    if self_match:
        gc, gl = qc, ql
    hits_at = {k: 0 for k in ks}
    precision_sum = {k: 0.0 for k in ks}
    aps, inps, without = [], [], 0
    for i in range(len(qc)):
        dist = {j: int(sum(int(a) != int(b) for a, b in zip(qc[i], gc[j]))) for j in range(len(gc))}
        items = [j for j in range(len(gc)) if not (self_match and j == i)]
        ranking = sorted(items, key=lambda j: (dist[j], j))  # ties: lower gallery index first
        relevant = [gl[j] == ql[i] for j in ranking]
        if not any(relevant):
            without += 1
            continue
        positions = [r + 1 for r, rel in enumerate(relevant) if rel]  # 1-based
        for k in ks:
            hits_at[k] += positions[0] <= k
            precision_sum[k] += sum(relevant[:k]) / k
        aps.append(np.mean([(n + 1) / p for n, p in enumerate(positions)]))
        inps.append(len(positions) / positions[-1])
    valid = len(qc) - without
    out = {f"recall_at_{k}": hits_at[k] / valid for k in ks}
    out.update({f"precision_at_{k}": precision_sum[k] / valid for k in ks})
    out.update(
        mAP=float(np.mean(aps)), mINP=float(np.mean(inps)), num_queries=len(qc), num_queries_without_positive=without
    )
    return out


def _codes(n, d, seed):
    return np.random.default_rng(seed).integers(0, 2, (n, d), dtype=np.uint8)


def _assert_metrics_equal(got, ref):
    assert list(got) == list(ref)
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


@pytest.mark.parametrize("bits", [3, 6, 13])  # few bits: many ties in the distances
def test_hamming_metrics_match_brute_force_with_ties(bits):
    qc, gc = _codes(30, bits, 0), _codes(50, bits, 1)
    rng = np.random.default_rng(2)
    ql, gl = rng.integers(0, 4, 30), rng.integers(0, 5, 50)
    ql[0] = 9  # no positive in the gallery: excluded and counted
    got = hamming_metrics(qc, ql, gc, gl, recall_at=KS, block_size=7)
    ref = brute_force(qc, ql, gc, gl)
    _assert_metrics_equal(got, ref)
    assert got["num_queries_without_positive"] >= 1


def test_hamming_metrics_self_match_protocol():
    codes = _codes(40, 5, 3)
    labels = np.random.default_rng(4).integers(0, 6, 40)
    labels[7] = 100  # its only member: no positive once itself is removed
    got = hamming_metrics(codes, labels, recall_at=KS, block_size=16)
    _assert_metrics_equal(got, brute_force(codes, labels))
    assert got["num_queries_without_positive"] >= 1


def test_ties_are_broken_by_lower_gallery_index():
    # Every gallery item at the same distance: the ranking is the index order.
    query = np.array([[1, 0, 1, 0]], np.uint8)
    gallery = np.array([[0, 0, 1, 0], [1, 1, 1, 0], [1, 0, 0, 0], [1, 0, 1, 1]], np.uint8)  # all distance 1
    for positive, recall_at_1, ap in ((0, 1.0, 1.0), (2, 0.0, 1 / 3), (3, 0.0, 1 / 4)):
        labels = np.zeros(4, int)
        labels[positive] = 1
        got = hamming_metrics(query, [1], gallery, labels, recall_at=(1,))
        assert got["recall_at_1"] == recall_at_1
        assert got["mAP"] == pytest.approx(ap)
    # and distance beats index: a closer item with a higher index comes first
    gallery = np.array([[0, 1, 0, 1], [1, 0, 1, 0]], np.uint8)
    assert hamming_metrics(query, [1], gallery, [0, 1], recall_at=(1,))["recall_at_1"] == 1.0


def test_hamming_agrees_with_retrieval_metrics_on_signed_codes():
    codes = _codes(25, 16, 5).astype(bool)
    labels = np.random.default_rng(6).integers(0, 3, 25)
    signed = codes.astype(np.float64) * 2 - 1
    _assert_metrics_equal(hamming_metrics(codes, labels), retrieval_metrics(signed, labels))


def test_hamming_metrics_input_checks():
    with pytest.raises(ValueError, match="only 0 and 1"):
        hamming_metrics(np.array([[0, 2]]), [0])
    with pytest.raises(ValueError, match="code lengths differ"):
        hamming_metrics(_codes(3, 4, 0), [0, 1, 0], _codes(3, 5, 0), [0, 1, 0])
    with pytest.raises(ValueError, match="integer"):
        hamming_metrics(np.zeros((2, 3), np.float32), [0, 0])


def test_binarize():
    x = np.array([[-0.3, 0.0, 0.2, 0.7], [0.5, 0.49, 1.0, -2.0]], np.float32)
    np.testing.assert_array_equal(binarize(x), [[0, 0, 1, 1], [1, 1, 1, 0]])
    assert binarize(x).dtype == np.uint8
    probabilities = np.array([[0.0, 0.49, 0.5, 1.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning on [0, 1] activations
        np.testing.assert_array_equal(binarize(probabilities, "round"), [[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="'sign' or 'round'"):
        binarize(x, "median")


def test_round_on_signed_features_warns():
    x = np.array([[-0.9, 0.6], [0.1, -0.2]])
    with pytest.warns(UserWarning, match="sign"):
        bits = binarize(x, method="round")
    np.testing.assert_array_equal(bits, [[0, 1], [0, 0]])  # still the documented rule


@pytest.mark.parametrize("d", [1, 7, 8, 9, 48, 64, 100])
def test_pack_unpack_round_trip(d):
    bits = _codes(11, d, d)
    packed = pack_bits(bits)
    assert packed.dtype == np.uint8 and packed.shape == (11, -(-d // 8))
    np.testing.assert_array_equal(unpack_bits(packed, d), bits)
    np.testing.assert_array_equal(pack_bits(bits.astype(bool)), packed)
    if d == 8:  # most significant bit first
        assert pack_bits(np.array([[1, 0, 0, 0, 0, 0, 0, 1]]))[0, 0] == 0b10000001
    with pytest.raises(ValueError, match="bytes per code"):
        unpack_bits(packed, d + 8)


def test_pack_rejects_non_bits():
    with pytest.raises(ValueError, match="only 0 and 1"):
        pack_bits(np.array([[0, 1, 3]]))
