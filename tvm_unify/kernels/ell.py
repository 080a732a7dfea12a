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

Two forms, one per kind of kernel: ``EllWeight`` (block columns + sign words: the sign-apply kernels
``direct`` and ``gemv``) and ``LutWeight`` for the table-lookup kernel, whose block columns and sign
bits are pre-combined into the index of the table entry each lookup reads (``to_lut``): the 4 sign bits
of a 4-wide block row and its column become one uint16, so a lookup costs one scalar load instead of
the shifts, masks and lane extractions that decoding the sign word took (1.4-1.7x on ResNet-18's deep
3x3 convs and MobileNetV2's wide 1x1 convs), for 8 bytes per 4x4 block instead of 6.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from ..format import UnifiedWeight

MAX_GROUPS = 4  # row groups per kernel (each is one loop nest: code size grows with it)
LUT_BITS = 4  # sign bits per table lookup at most: a table holds the 2**4 signed sums of 4 inputs
GROUP_GAIN = 0.02  # a further group must cut the computed slots by this fraction to be worth its loop


@dataclass(frozen=True)
class RowGroup:
    """Sorted block rows ``start .. start + size - 1``, each computing ``width`` slots."""

    start: int
    size: int
    width: int


class _RowGrouped:
    """Row sorting and grouping shared by both forms (they have ``scales`` and ``order``)."""

    scales: np.ndarray  # (nbr, width) float32, 0 in pad slots (a unified block's scale is > 0)
    order: np.ndarray  # (nbr,) int32: the weight's block row that sorted row r holds
    max_groups = MAX_GROUPS  # a class default, not a field: ``with_max_groups`` sets it on a copy

    @property
    def width(self) -> int:
        return int(self.scales.shape[1])

    @property
    def counts(self) -> np.ndarray:
        """Blocks per sorted row (non-increasing)."""
        return (self.scales != 0).sum(axis=1)

    @cached_property
    def groups(self) -> tuple[RowGroup, ...]:
        """The row groups the kernels loop over (derived from the arrays, so a kernel regenerated from
        its call's constants gets the same loops)."""
        return row_groups(self.counts, self.max_groups)

    def with_max_groups(self, max_groups: int):
        """This weight with kernels looping over at most ``max_groups`` row groups: a tuning knob, fewer
        loop nests (less code, fewer branches) against more computed pad slots."""
        if max_groups == self.max_groups:
            return self
        copy = replace(self)
        copy.max_groups = max_groups
        return copy

    @property
    def padding(self) -> float:
        """Fraction of the slots the kernel computes that are padding."""
        computed = sum(g.size * g.width for g in self.groups)
        return 1.0 - float(self.counts.sum()) / computed if computed else 0.0

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays))


@dataclass
class EllWeight(_RowGrouped):
    """Per sorted block row ``r`` and slot ``l``: block column, scale, and the block's sign words."""

    rows: int
    cols: int
    columns: np.ndarray  # (nbr, width) int32
    scales: np.ndarray
    signs: np.ndarray  # (nbr, width, words) uint8/16/32, bit i*cols+j set = negative
    order: np.ndarray

    @property
    def arrays(self) -> tuple[np.ndarray, ...]:
        """The kernel's constant arguments, in parameter order."""
        return (self.columns, self.scales, self.signs, self.order)

    @property
    def word_bits(self) -> int:
        return self.signs.dtype.itemsize * 8


@dataclass
class LutWeight(_RowGrouped):
    """Per sorted block row, slot and lookup ``i * lookups + j`` (block row i, j-th group of ``bits``
    columns): the table entry ``(column * lookups + j) * 2**bits + signs of those bits`` (see ``to_lut``)."""

    rows: int
    cols: int
    entries: np.ndarray  # (nbr, width, rows * lookups) uint16, or int32 for very wide layers
    scales: np.ndarray
    order: np.ndarray

    @property
    def arrays(self) -> tuple[np.ndarray, ...]:
        return (self.entries, self.scales, self.order)

    @property
    def bits(self) -> int:
        return lut_bits(self.cols)

    @property
    def lookups(self) -> int:
        """Table lookups per block row."""
        return self.cols // self.bits


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


def lut_bits(cols: int) -> int:
    """Sign bits per lookup for blocks ``cols`` wide: the largest divisor of ``cols`` up to LUT_BITS, so
    lookups tile a block row and the table groups tile K."""
    return max(d for d in range(1, LUT_BITS + 1) if cols % d == 0)


def to_lut(ell: EllWeight) -> LutWeight:
    """The table-lookup form of ``ell``: same rows, order and scales; each block's column and sign bits
    become the table entries its lookups read (pad slots: column 0 and no signs, harmless at scale 0)."""
    bits, n = lut_bits(ell.cols), ell.rows * ell.cols
    lookups = ell.cols // bits
    nbr, width, words = ell.signs.shape
    word_bits = ell.word_bits
    shifts = np.arange(word_bits, dtype=np.uint64)
    sign_bits = ((ell.signs[..., None].astype(np.uint64) >> shifts) & 1).reshape(nbr, width, words * word_bits)[..., :n]
    fields = (sign_bits.reshape(nbr, width, ell.rows, lookups, bits).astype(np.int64)
              << np.arange(bits, dtype=np.int64)).sum(axis=-1)
    groups = ell.columns.astype(np.int64)[..., None, None] * lookups + np.arange(lookups)
    entries = ((groups << bits) + fields).reshape(nbr, width, ell.rows * lookups)
    dtype = np.uint16 if entries.max(initial=0) < 1 << 16 else np.int32
    return LutWeight(ell.rows, ell.cols, entries.astype(dtype), ell.scales, ell.order)
