"""Perceptual hashes and the near-duplicate search (exact on small sets, banded on large ones)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps

log = logging.getLogger(__name__)


# --- perceptual hash and near-duplicate search ------------------------------------------------------------------


def perceptual_hash(image: Image.Image) -> int:
    """64-bit DCT perceptual hash (the pHash/imagehash construction).

    Grey 32x32 (Lanczos) -> 2-D DCT-II -> the 8x8 lowest frequencies -> one bit per
    coefficient: above their median. Bits are row-major, most significant first.
    Robust to resizing, recompression and global brightness/contrast changes;
    featureless (flat) images all hash alike.
    """
    from scipy.fft import dctn

    grey = ImageOps.exif_transpose(image).convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    coefficients = dctn(np.asarray(grey, dtype=np.float64), type=2, norm="ortho")[:8, :8]
    coefficients = np.round(coefficients, 6)  # float noise must not flip bits of flat regions
    bits = (coefficients > np.median(coefficients)).reshape(-1)
    return int(np.packbits(bits).view(">u8")[0])


def hamming(a: int, b: int) -> int:
    return (int(a) ^ int(b)).bit_count()


def near_duplicate_pairs(hashes: Sequence[int] | np.ndarray, max_hamming: int, method: str = "auto") -> np.ndarray:
    """All pairs ``(i, j, distance)`` with ``i < j`` and Hamming distance <= ``max_hamming``, sorted.

    Two exact methods:

    * ``"all_pairs"``: XOR + ``np.bitwise_count`` over blocks of rows: O(N^2) popcounts
      (vectorised, ~1e8/s), O(block x N) memory; fine up to tens of thousands of images.
    * ``"multi_index"`` (multi-index hashing): split the 64 bits into ``max_hamming + 1``
      bands; by pigeonhole, two hashes within ``max_hamming`` agree exactly on at least
      one band. Bucket by each band (sort, O(N log N) per band) and verify only pairs
      sharing a bucket: about O(m N log N + N^2 m / 2^(64/m)) for m bands with
      uniform hashes; degrades towards all-pairs when bands get narrow or many
      images share a band value.

    ``"auto"`` takes multi-index for N > 2048 when bands are at least 8 bits wide
    (``max_hamming <= 7``), all-pairs otherwise.
    """
    values = np.asarray([int(h) for h in hashes], dtype=np.uint64)
    n = len(values)
    if not 0 <= max_hamming <= 64:
        raise ValueError(f"max_hamming must be 0-64, got {max_hamming}")
    bands = max_hamming + 1
    if method == "auto":
        method = "multi_index" if n > 2048 and 64 // bands >= 8 else "all_pairs"
    empty = np.zeros((0, 3), dtype=np.int64)
    if n < 2:
        return empty

    if method == "all_pairs":
        found = []
        block = max(1, min(n, 4_000_000 // max(n, 1)))
        columns = np.arange(n)
        for start in range(0, n, block):
            rows = np.arange(start, min(n, start + block))
            distances = np.bitwise_count(values[rows, None] ^ values[None, :]).astype(np.int64)
            mask = (distances <= max_hamming) & (columns[None, :] > rows[:, None])
            i, j = np.nonzero(mask)
            if len(i):
                found.append(np.stack([rows[i], j, distances[i, j]], axis=1))
        return np.concatenate(found) if found else empty

    if method != "multi_index":
        raise ValueError(f"unknown method {method!r}: 'auto', 'all_pairs' or 'multi_index'")
    widths = [64 // bands + (1 if k < 64 % bands else 0) for k in range(bands)]
    candidates = []
    offset = 0
    for width in widths:
        keys = (values >> np.uint64(offset)) & np.uint64((1 << width) - 1)
        offset += width
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        edges = np.flatnonzero(np.diff(sorted_keys)) + 1
        for group in np.split(order, edges):
            if len(group) > 1:
                i, j = np.triu_indices(len(group), k=1)
                a, b = group[i], group[j]
                candidates.append(np.minimum(a, b) * n + np.maximum(a, b))
    if not candidates:
        return empty
    codes = np.unique(np.concatenate(candidates))
    i, j = codes // n, codes % n
    distances = np.bitwise_count(values[i] ^ values[j]).astype(np.int64)
    keep = distances <= max_hamming
    return np.stack([i[keep], j[keep], distances[keep]], axis=1)
