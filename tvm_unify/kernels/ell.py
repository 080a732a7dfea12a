"""Kernel-side layout of a unified weight: blocked ELL, so every loop bound is a compile-time constant.

The stored format is BSR (``format.py``): block rows of different lengths, read through row pointers.
A loop ``for b in range(indptr[r], indptr[r + 1])`` has data-dependent bounds, which meta-schedule
rejects (its DisallowDynamicLoop postproc) and which hides the trip count from LLVM. Since the weights
are compile-time constants, the kernels are specialized to the block pattern instead:

- block rows are sorted by their number of blocks, longest first (``order`` maps a sorted row back to
  the weight's block row, where the kernel stores its result);
- the sorted rows are cut into at most ``MAX_GROUPS`` *row groups*, each padded to its longest row
  (pad slots: scale 0, column 0, no sign bits), chosen to compute as few pad slots as possible. A
  kernel runs one static loop nest per group, so its loops have constant trip counts and only the
  group's pad slots cost work. Magnitude pruning leaves rows of very different lengths (padding every
  row to the longest wasted 16% of the slots on ResNet-18 and 56% on MobileNetV2 at 75% sparsity; four
  groups waste 3% and 8%).

The arrays stay padded to the longest row overall (one 2D constant per kind, 10 bytes per pad slot of
a 4x4 block, against 64 bytes of dense fp32 weights it replaces). Sign bits are regrouped per block
into the smallest unsigned words that hold a block (uint8/16/32).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..format import UnifiedWeight

MAX_GROUPS = 4  # row groups per kernel (each is one loop nest: code size grows with it)
GROUP_GAIN = 0.02  # a further group must cut the computed slots by this fraction to be worth its loop


@dataclass(frozen=True)
class RowGroup:
    """Sorted block rows ``start .. start + size - 1``, each computing ``width`` slots."""

    start: int
    size: int
    width: int


@dataclass
class EllWeight:
    """Per sorted block row ``r`` and slot ``l``: block column, scale, and the block's sign words."""

    rows: int
    cols: int
    columns: np.ndarray  # (nbr, width) int32
    scales: np.ndarray  # (nbr, width) float32, 0 in pad slots (a unified block's scale is > 0)
    signs: np.ndarray  # (nbr, width, words) uint8/16/32, bit i*cols+j set = negative
    order: np.ndarray  # (nbr,) int32: the weight's block row that sorted row r holds

    @property
    def arrays(self) -> tuple[np.ndarray, ...]:
        """The kernel's constant arguments, in parameter order."""
        return (self.columns, self.scales, self.signs, self.order)

    @property
    def width(self) -> int:
        return int(self.columns.shape[1])

    @property
    def word_bits(self) -> int:
        return self.signs.dtype.itemsize * 8

    @property
    def counts(self) -> np.ndarray:
        """Blocks per sorted row (non-increasing)."""
        return (self.scales != 0).sum(axis=1)

    @cached_property
    def groups(self) -> tuple[RowGroup, ...]:
        """The row groups the kernels loop over (derived from the arrays, so a kernel regenerated from
        its call's constants gets the same loops)."""
        return row_groups(self.counts)

    @property
    def padding(self) -> float:
        """Fraction of the slots the kernel computes that are padding."""
        computed = sum(g.size * g.width for g in self.groups)
        return 1.0 - float(self.counts.sum()) / computed if computed else 0.0

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays))


def row_groups(counts: np.ndarray, max_groups: int = MAX_GROUPS, gain: float = GROUP_GAIN
               ) -> tuple[RowGroup, ...]:
    """Cut rows of non-increasing ``counts`` into at most ``max_groups`` consecutive groups that compute
    the fewest slots (a group computes its size times its first row's count), by dynamic programming
    over the cut points; a group is added only if it saves ``gain`` of the slots. Rows with no blocks
    form a group of width 0: they only store their epilogue."""
    counts = np.asarray(counts, dtype=np.int64)
    n = len(counts)
    # cost[g][j]: fewest slots for rows 0..j-1 in g groups; cut[g][j]: where the last of them starts.
    cost = np.full((max_groups + 1, n + 1), np.iinfo(np.int64).max // 4, dtype=np.int64)
    cut = np.zeros((max_groups + 1, n + 1), dtype=np.int64)
    cost[0, 0] = 0
    starts = np.arange(n)
    for g in range(1, max_groups + 1):
        for j in range(1, n + 1):
            options = cost[g - 1, :j] + (j - starts[:j]) * counts[:j]
            cut[g, j] = int(np.argmin(options))
            cost[g, j] = options[cut[g, j]]
    groups = 1
    for g in range(2, max_groups + 1):
        if cost[g, n] < (1 - gain) * cost[groups, n]:
            groups = g
    bounds = [n]
    for g in range(groups, 0, -1):
        bounds.append(int(cut[g, bounds[-1]]))
    bounds.reverse()
    return tuple(RowGroup(a, b - a, int(counts[a])) for a, b in zip(bounds, bounds[1:]) if b > a)


def _word_dtype(bits: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if bits <= np.dtype(dtype).itemsize * 8:
            return np.dtype(dtype)
    return np.dtype(np.uint32)


def to_ell(enc: UnifiedWeight) -> EllWeight:
    """Sort the BSR rows of ``enc`` longest first, pad them to equal length, regroup the sign bits per
    block."""
    rows, cols = enc.spec.shape
    n = rows * cols
    nbr = enc.grid[0]
    if not (enc.scales > 0).all():
        raise ValueError("a unified block has a zero scale (it should have been pruned)")
    counts = np.diff(enc.indptr)
    order = np.argsort(-counts, kind="stable").astype(np.int32)
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
    sorted_row = np.empty(nbr, dtype=np.int64)
    sorted_row[order] = np.arange(nbr)
    row = np.repeat(sorted_row, counts)
    columns = np.zeros((nbr, width), dtype=np.int32)
    scales = np.zeros((nbr, width), dtype=np.float32)
    signs = np.zeros((nbr, width, words), dtype=dtype)
    columns[row, slot] = enc.indices
    scales[row, slot] = enc.scales
    signs[row, slot] = block_words.astype(dtype)
    return EllWeight(rows, cols, columns, scales, signs, order)
