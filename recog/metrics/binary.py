"""Binary codes for hashing retrieval: binarisation, bit packing and Hamming-ranking metrics.

Codes are bit arrays ``[N, D]`` with values 0/1 (``uint8`` from ``binarize``, or bool / any
integer type). ``pack_bits`` stores them 8 to a byte for disk or memory; the metrics take the
unpacked bits (``unpack_bits(packed, D)`` first).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import numpy as np

from recog.metrics.retrieval import retrieval_metrics

__all__ = ["binarize", "pack_bits", "unpack_bits", "hamming_metrics"]

# Inner products of +-1 vectors are integers; float32 represents them (and every partial sum of
# the BLAS product) exactly up to 2**24 bits per code.
_FLOAT32_EXACT_BITS = 2**24


def binarize(features, method: str = "sign") -> np.ndarray:
    """Bits ``[N, D] uint8`` (0/1) from real-valued features ``[N, D]``.

    ``sign``: bit = x > 0 (for signed outputs such as ``TanhNeck``'s; 0 maps to 0).
    ``round``: bit = x >= 0.5 (for [0, 1] activations such as a sigmoid's); warns when the
    features have negative values, for which ``sign`` is likely what is meant.
    """
    features = np.asarray(features)
    if features.ndim != 2 or not (
        np.issubdtype(features.dtype, np.floating) or np.issubdtype(features.dtype, np.integer)
    ):
        raise ValueError(f"features must be a real [N, D] array, got {features.dtype} {features.shape}")
    if np.issubdtype(features.dtype, np.floating) and np.isnan(features).any():
        raise ValueError("features contain nan")
    if method == "sign":
        return (features > 0).astype(np.uint8)
    if method == "round":
        if features.size and features.min() < 0:
            warnings.warn(
                "binarize(method='round') expects [0, 1] activations (bit = x >= 0.5) but the "
                "features have negative values: method='sign' (bit = x > 0) is likely meant",
                UserWarning,
                stacklevel=2,
            )
        return (features >= 0.5).astype(np.uint8)
    raise ValueError(f"method must be 'sign' or 'round', got {method!r}")


def pack_bits(bits) -> np.ndarray:
    """``[N, D]`` 0/1 bits -> ``[N, ceil(D / 8)] uint8``, most significant bit first (np.packbits)."""
    return np.packbits(_check_bits(bits, "bits"), axis=1)


def unpack_bits(packed, num_bits: int) -> np.ndarray:
    """Inverse of ``pack_bits``: ``[N, ceil(D / 8)] uint8`` -> ``[N, D] uint8`` bits, ``D = num_bits``."""
    packed = np.asarray(packed)
    if packed.ndim != 2 or packed.dtype != np.uint8:
        raise ValueError(f"packed codes must be a uint8 [N, B] array, got {packed.dtype} {packed.shape}")
    if num_bits < 0 or -(-num_bits // 8) != packed.shape[1]:
        raise ValueError(f"{num_bits} bits need {-(-num_bits // 8)} bytes per code, got {packed.shape[1]}")
    return np.unpackbits(packed, axis=1, count=num_bits)


def hamming_metrics(
    query_codes,
    query_labels,
    gallery_codes=None,
    gallery_labels=None,
    recall_at: Iterable[int] = (1, 5, 10),
    block_size: int = 1024,
) -> dict[str, float | int]:
    """Recall@K, mAP and mINP of ranking the gallery by Hamming distance to each query.

    Same keys, conventions and errors as ``recog.metrics.retrieval_metrics``: the ranking is
    by Hamming distance ascending, equal distances ordered by gallery index (lower first); with
    no gallery (query set == gallery) each query's own entry is removed; queries without a
    positive are left out of the averages and counted in ``num_queries_without_positive``.

    Args:
        query_codes: [N, D] bits (0/1; bool or any integer dtype), e.g. from ``binarize``.
        query_labels: [N] labels.
        gallery_codes, gallery_labels: [M, D] and [M], or both None.
        recall_at, block_size: as for ``retrieval_metrics``.

    Implementation: with bits mapped to +-1, the inner product is ``D - 2 * hamming``, a
    strictly decreasing function of the distance and an exact integer in floating point, so
    ``retrieval_metrics`` on the +-1 codes gives exactly the Hamming ranking and its tie order.
    Memory is 4 bytes per bit of the codes (8 beyond 2**24 bits).
    """
    queries = _signed(_check_bits(query_codes, "query codes"))
    gallery = None if gallery_codes is None else _signed(_check_bits(gallery_codes, "gallery codes"))
    if gallery is not None and gallery.shape[1] != queries.shape[1]:
        raise ValueError(f"query and gallery code lengths differ: {queries.shape[1]} vs {gallery.shape[1]} bits")
    return retrieval_metrics(queries, query_labels, gallery, gallery_labels, recall_at=recall_at, block_size=block_size)


def _check_bits(bits, name: str) -> np.ndarray:
    bits = np.asarray(bits)
    if bits.ndim != 2 or not (bits.dtype == np.bool_ or np.issubdtype(bits.dtype, np.integer)):
        raise ValueError(f"{name} must be a bool or integer [N, D] array of 0/1, got {bits.dtype} {bits.shape}")
    if bits.dtype != np.bool_ and bits.size and ((bits != 0) & (bits != 1)).any():
        raise ValueError(f"{name} must hold only 0 and 1 (unpacked bits; see unpack_bits)")
    return bits.astype(np.uint8, copy=False)


def _signed(bits: np.ndarray) -> np.ndarray:
    dtype = np.float32 if bits.shape[1] <= _FLOAT32_EXACT_BITS else np.float64
    return bits.astype(dtype) * 2 - 1
