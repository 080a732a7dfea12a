"""The int8 dot-product algorithms: ``sdot`` (ARM dotprod) and ``dot4``, its portable twin.

A unified block row is ``scale * signs``; within one block row of the weight the scales differ per
block, so summing blocks in int32 needs them on one grid. ``DotWeight`` puts each block row's scales
on an int8 grid of ``max scale / 127`` (per-block-row output scaling): a block becomes the int8 values
``sign * level`` (level = ``round(scale / row_scale)`` in 1..127) and a whole block row accumulates in
int32, rescaled once per output by ``row_scale * act_scale``. The weights are then exactly int8 and
each 4 consecutive k of a block row are one int32 word, which is what ``sdot`` multiplies. Keeping the
weights +-1 instead costs a convert and an FMA per block and row on top of each sdot (3x the
instructions); the grid's rounding (at most ``row_scale / 2`` per weight, like per-channel int8
weights) is measured in ``benchmarks/int8_accuracy.md``.

The input is staged ``[tiles, K/4, lanes]`` int32 words (``gemm.py``): one 16-byte load holds 4 k of
4 pixels, so ``sdot acc, x, broadcast(w)`` adds one block row's 4 k times 4 pixels to 4 int32 lanes.
A tile of ``lanes`` pixels (16 for 4x4 blocks: 16 accumulator registers, ``neon.dot_lanes``) keeps
the block's rows x lanes accumulators in registers across a block row. ``dot4`` is the same kernel
with the dot product written as widening int8 multiplies and adds: on NEON without dotprod LLVM makes
``smull``/``sadalp``-style code of it, and on the host it checks the layout and the arithmetic that
``sdot`` (which only runs on ARM) relies on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from tvm.script import tirx as T

from .common import each_row, zero
from .ell import EllWeight, _RowGrouped
from .gemm import GemmPlan

SDOT = "llvm.aarch64.neon.sdot.v4i32.v16i8"
LEVELS = 127  # int8 grid of a block row's scales


@dataclass
class DotWeight(_RowGrouped):
    """Per sorted block row ``r`` and slot ``l``: block column, the block's int8 weights as words of 4
    consecutive k (``words[r, l, i * cols // 4 + q]`` = row i, k 4q..4q+3), and per block row the
    scale of its int8 grid."""

    rows: int
    cols: int
    columns: np.ndarray  # (nbr, width) int32
    words: np.ndarray  # (nbr, width, rows * cols // 4) int32, 0 in pad slots
    row_scales: np.ndarray  # (nbr,) float32
    order: np.ndarray

    @property
    def arrays(self) -> tuple[np.ndarray, ...]:
        return (self.columns, self.words, self.row_scales, self.order)

    @property
    def width(self) -> int:
        return int(self.words.shape[1])

    @property
    def counts(self) -> np.ndarray:
        """Blocks per sorted row: a real block has a nonzero level in every weight."""
        return (self.words != 0).any(axis=2).sum(axis=1)


def block_levels(ell: EllWeight) -> tuple[np.ndarray, np.ndarray]:
    """The int8 weights ``sign * level`` of every block, ``(nbr, width, rows * cols)`` (0 in pad slots),
    and the per-block-row grid scale ``max scale / 127`` (1 for an empty row)."""
    n = ell.rows * ell.cols
    bits = np.unpackbits(np.ascontiguousarray(ell.signs).view(np.uint8), axis=-1, bitorder="little")[..., :n]
    top = ell.scales.max(axis=1, initial=0)
    row_scales = np.where(top > 0, top / LEVELS, 1).astype(np.float32)
    levels = np.where(ell.scales > 0, np.clip(np.rint(ell.scales / row_scales[:, None]), 1, LEVELS), 0)
    return (levels[..., None] * (1 - 2 * bits.astype(np.int32))).astype(np.int8), row_scales


def to_dot(ell: EllWeight) -> DotWeight:
    """The dot-product form of ``ell`` (blocks a multiple of 4 wide: a word never spans two blocks)."""
    if ell.cols % 4:
        raise ValueError(f"the int8 dot-product kernels need blocks a multiple of 4 wide, not {ell.cols}")
    weights, row_scales = block_levels(ell)
    return DotWeight(ell.rows, ell.cols, ell.columns, np.ascontiguousarray(weights).view(np.int32), row_scales,
                     ell.order)


def _sdot(acc, x_words, block_words, word: int):
    """``acc[p] += sum_j x[p, j] * w[j]`` for 4 pixels p, w being word ``word`` of the block's words
    (one vector load per block): one indexed ``sdot`` (LLVM folds the lane splat into ``v.4b[lane]``)."""
    return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(SDOT), acc, T.reinterpret("int8x16", x_words),
                                   T.reinterpret("int8x16", T.Shuffle([block_words], [word] * 4)), dtype="int32x4")


def _dot4(xbytes, t, kq, v, wbytes, rb, slot, word):
    """``sum_j x[kq * 4 + j, pixel v] * w[j]`` in int32, from the int8 views of the staged input and of
    the weight words (portable: stride-4 byte loads, widening multiplies and adds)."""
    total = T.int32(0)
    for j in range(4):
        total = total + T.Cast("int32", xbytes[t, kq, v * 4 + j]) * T.Cast("int32", wbytes[rb, slot, word * 4 + j])
    return total


def _dot_body(plan: GemmPlan, instruction: bool) -> Callable:
    """The block-row dot-product GEMM over ``plan`` (a ``DotWeight``, input staged as words):
    ``instruction`` uses ``sdot``, else the portable widening form."""
    weight = plan.weight
    columns, words, row_scales, order = (plan.buffers[name] for name in ("columns", "words", "row_scales", "order"))
    br, quads = weight.rows, weight.cols // 4
    vl, tiles, chunks, groups, store = plan.vl, plan.tiles, plan.chunks, weight.groups, plan.store

    @T.inline
    def accumulate(acc, xcol, xbytes, wbytes, t, rb, slot):
        """One block: its rows' words times the tile's words of the block's k."""
        for q in T.unroll(quads):
            if instruction:
                for u in T.unroll(vl // 4):
                    for i in T.unroll(br):
                        acc[i, T.ramp(u * 4, 1, 4)] = _sdot(
                            acc[i, T.ramp(u * 4, 1, 4)], xcol[t, columns[rb, slot] * quads + q, T.ramp(u * 4, 1, 4)],
                            words[rb, slot, T.ramp(0, 1, br * quads)], i * quads + q)
            else:
                for i in T.unroll(br):
                    for v in T.vectorized(vl):
                        acc[i, v] = acc[i, v] + _dot4(xbytes, t, columns[rb, slot] * quads + q, v, wbytes, rb, slot,
                                                      i * quads + q)

    @T.inline
    def body(_src, xcol, yv, qscale):
        xbytes = T.decl_buffer((xcol.shape[0], xcol.shape[1], vl * 4), "int8", data=xcol.data)
        wbytes = T.decl_buffer((words.shape[0], words.shape[1], words.shape[2] * 4), "int8", data=words.data)
        for task in T.parallel(tiles * chunks):
            @T.inline
            def dot_row(rb, slots):
                acc = T.decl_buffer((br, vl), "int32")
                zero(acc, br, vl)
                for slot in range(slots):
                    accumulate(acc, xcol, xbytes, wbytes, task // chunks, rb, slot)
                for i in T.unroll(br):
                    for v in T.vectorized(vl):
                        store(yv, plan.tile_start(task // chunks), order[rb] * br + i, v,
                              T.Cast("float32", acc[i, v]) * (row_scales[rb] * qscale[0]))

            each_row(task % chunks, groups, chunks, dot_row)

    return body


def sdot_body(plan: GemmPlan) -> Callable:
    """The dot-product GEMM with ARM ``sdot`` (aarch64 with dotprod only)."""
    return _dot_body(plan, instruction=True)


def dot4_body(plan: GemmPlan) -> Callable:
    """The dot-product GEMM with portable widening int8 arithmetic (NEON without dotprod; host tests)."""
    return _dot_body(plan, instruction=False)
