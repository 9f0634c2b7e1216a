"""Binary codes for hashing retrieval: binarisation, bit packing and Hamming-ranking metrics.

Codes are bit arrays ``[N, D]`` with values 0/1 (``uint8`` from ``binarize``, or bool / any
integer type). ``pack_bits`` stores them 8 to a byte for disk or memory; the metrics
(``recog.metrics.hamming_metrics``, ``recog.metrics.rank(binary=True)``) take the unpacked bits
(``unpack_bits(packed, D)`` first).
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["binarize", "check_bits", "pack_bits", "signed_codes", "unpack_bits"]

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
    return np.packbits(check_bits(bits, "bits"), axis=1)


def unpack_bits(packed, num_bits: int) -> np.ndarray:
    """Inverse of ``pack_bits``: ``[N, ceil(D / 8)] uint8`` -> ``[N, D] uint8`` bits, ``D = num_bits``."""
    packed = np.asarray(packed)
    if packed.ndim != 2 or packed.dtype != np.uint8:
        raise ValueError(f"packed codes must be a uint8 [N, B] array, got {packed.dtype} {packed.shape}")
    if num_bits < 0 or -(-num_bits // 8) != packed.shape[1]:
        raise ValueError(f"{num_bits} bits need {-(-num_bits // 8)} bytes per code, got {packed.shape[1]}")
    return np.unpackbits(packed, axis=1, count=num_bits)


def check_bits(bits, name: str) -> np.ndarray:
    bits = np.asarray(bits)
    if bits.ndim != 2 or not (bits.dtype == np.bool_ or np.issubdtype(bits.dtype, np.integer)):
        raise ValueError(f"{name} must be a bool or integer [N, D] array of 0/1, got {bits.dtype} {bits.shape}")
    if bits.dtype != np.bool_ and bits.size and ((bits != 0) & (bits != 1)).any():
        raise ValueError(f"{name} must hold only 0 and 1 (unpacked bits; see unpack_bits)")
    return bits.astype(np.uint8, copy=False)


def signed_codes(bits: np.ndarray) -> np.ndarray:
    """0/1 bits [N, D] -> +-1 codes [N, D] float32 (float64 beyond 2**24 bits): their inner product
    is ``D - 2 * Hamming distance``, an exact integer."""
    dtype = np.float32 if bits.shape[1] <= _FLOAT32_EXACT_BITS else np.float64
    return bits.astype(dtype) * 2 - 1
