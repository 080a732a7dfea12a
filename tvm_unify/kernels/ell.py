"""Kernel-side layout of a unified weight: blocked ELL, so every loop bound is a compile-time constant.

The stored format is BSR (``format.py``): block rows of different lengths, read through row pointers.
A loop ``for b in range(indptr[r], indptr[r + 1])`` has data-dependent bounds, which meta-schedule
rejects (its DisallowDynamicLoop postproc) and which hides the trip count from LLVM. Since the weights
are compile-time constants, we pad every block row to the longest one (pad slots: scale 0, column 0,
no sign bits): the loops become static, the pattern is still read from constant arrays (one index load
per block, amortized over a vector of outputs), and the padding cost is measured (``padding``).
Sign bits are regrouped per block into the smallest unsigned words that hold a block (uint8/16/32).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..format import UnifiedWeight


@dataclass
class EllWeight:
    """Per block row ``r`` and slot ``l``: block column, scale, and the block's sign words."""

    rows: int
    cols: int
    columns: np.ndarray  # (nbr, width) int32
    scales: np.ndarray  # (nbr, width) float32, 0 in pad slots
    signs: np.ndarray  # (nbr, width, words) uint8/16/32, bit i*cols+j set = negative

    @property
    def width(self) -> int:
        return int(self.columns.shape[1])

    @property
    def word_bits(self) -> int:
        return self.signs.dtype.itemsize * 8

    @property
    def padding(self) -> float:
        """Fraction of slots that are padding."""
        return float((self.scales == 0).mean()) if self.scales.size else 0.0

    @property
    def nbytes(self) -> int:
        return int(self.columns.nbytes + self.scales.nbytes + self.signs.nbytes)


def _word_dtype(bits: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if bits <= np.dtype(dtype).itemsize * 8:
            return np.dtype(dtype)
    return np.dtype(np.uint32)


def to_ell(enc: UnifiedWeight) -> EllWeight:
    """Pad the BSR rows of ``enc`` to equal length and regroup its sign bits per block."""
    rows, cols = enc.spec.shape
    n = rows * cols
    nbr = enc.grid[0]
    counts = np.diff(enc.indptr)
    width = max(int(counts.max(initial=0)), 1)
    dtype = _word_dtype(n)
    word_bits = dtype.itemsize * 8
    words = -(-n // word_bits)
    bits = np.unpackbits(enc.signs, bitorder="little")[: enc.nnzb * n].reshape(enc.nnzb, n)
    padded_bits = np.zeros((enc.nnzb, words * word_bits), dtype=np.uint8)
    padded_bits[:, :n] = bits
    weights = (np.uint64(1) << np.arange(word_bits, dtype=np.uint64))
    block_words = (padded_bits.reshape(enc.nnzb, words, word_bits).astype(np.uint64) * weights).sum(axis=2)
    slot = np.arange(enc.nnzb) - np.repeat(enc.indptr[:-1], counts)
    row = np.repeat(np.arange(nbr), counts)
    columns = np.zeros((nbr, width), dtype=np.int32)
    scales = np.zeros((nbr, width), dtype=np.float32)
    signs = np.zeros((nbr, width, words), dtype=dtype)
    columns[row, slot] = enc.indices
    scales[row, slot] = enc.scales
    signs[row, slot] = block_words.astype(dtype)
    return EllWeight(rows, cols, columns, scales, signs)
