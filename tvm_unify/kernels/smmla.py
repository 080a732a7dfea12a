"""The ``smmla`` algorithm (aarch64 with i8mm): the block-row int8 GEMM as 2x8 by 8x2 matrix products.

``smmla acc, a, b`` adds ``a (2x8 int8) @ b (2x8 int8)^T`` to a 2x2 int32 tile: 32 multiply-adds, twice
an ``sdot``'s 16. Its 8-deep k would cover only 4 useful k of a 4-wide block (half the work wasted), so
the 8 k are two blocks of the same block row instead: ``PairWeight`` pairs a row's slots (2s, 2s+1)
and packs, per pair of weight rows, ``[row of block A | row of block B]`` twice into one 16-byte
operand; the pixel operand ``[x of A's k | x of B's k]`` for two pixels is one ``zip1``/``zip2`` of the
two blocks' staged words (the same ``[tiles, K/4, lanes]`` staging and int8 grid as ``sdot.py``).
Per pair of 4x4 blocks and 4 pixels that is 4 smmla + 2 zips against 8 sdot. An odd row pairs its last
block with a pad slot (zero weights). The 2x2 tiles (rows x pixels) are untangled once per block row,
at the store.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from tvm.script import tirx as T

from .common import each_row
from .ell import EllWeight
from .gemm import GemmPlan
from .sdot import DotWeight, to_dot

SMMLA = "llvm.aarch64.neon.smmla.v4i32.v16i8"


class PairWeight(DotWeight):
    """``DotWeight``'s arrays regrouped per pair ``l`` of a sorted block row's blocks: ``columns[r, l]``
    holds the two block columns, and per k word ``q`` and pair of weight rows ``rp`` the words are
    ``[A row 2rp, B row 2rp, A row 2rp+1, B row 2rp+1]`` (``words[r, l, (q * rows // 2 + rp) * 4 + ...]``).
    A row's count is its pairs (a pair with one real block counts)."""


def to_pairs(ell: EllWeight) -> PairWeight:
    """The paired form of ``ell`` (blocks a multiple of 4 wide and of 2 tall)."""
    if ell.rows % 2:
        raise ValueError(f"smmla pairs weight rows: blocks must be an even number of rows tall, not {ell.rows}")
    dot = to_dot(ell)
    nbr, width = dot.columns.shape
    pairs, quads, half = -(-width // 2), ell.cols // 4, ell.rows // 2
    columns = np.zeros((nbr, pairs * 2), dtype=np.int32)
    columns[:, :width] = dot.columns
    words = np.zeros((nbr, pairs * 2, ell.rows, quads), dtype=np.int32)
    words[:, :width] = dot.words.reshape(nbr, width, ell.rows, quads)
    # (row, pair, block, row pair, row in pair, quad) -> (row, pair, quad, row pair, row in pair, block)
    words = words.reshape(nbr, pairs, 2, half, 2, quads).transpose(0, 1, 5, 3, 4, 2)
    return PairWeight(ell.rows, ell.cols, columns.reshape(nbr, pairs, 2),
                      np.ascontiguousarray(words).reshape(nbr, pairs, quads * half * 4), dot.row_scales, ell.order)


def _smmla(acc, weights, pixels):
    return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(SMMLA), acc, T.reinterpret("int8x16", weights),
                                   T.reinterpret("int8x16", pixels), dtype="int32x4")


def smmla_body(plan: GemmPlan) -> Callable:
    """The paired-block GEMM over ``plan`` (a ``PairWeight``, input staged as words) with ``smmla``."""
    weight = plan.weight
    columns, words, row_scales, order = (plan.buffers[name] for name in ("columns", "words", "row_scales", "order"))
    br, quads, half = weight.rows, weight.cols // 4, weight.rows // 2
    vl, tiles, chunks, groups, store = plan.vl, plan.tiles, plan.chunks, weight.groups, plan.store

    @T.inline
    def accumulate(acc, xcol, t, rb, pair):
        """One pair of blocks times the tile: per 4 pixels, two pixel operands (zip1/zip2 of the blocks'
        words), each times every pair of weight rows. ``acc[rp, pp * 4 + e * 2 + f]`` is weight row
        ``2 rp + e`` at pixel ``2 pp + f``."""
        for q in T.unroll(quads):
            for u in T.unroll(vl // 4):
                for h in T.unroll(2):
                    for rp in T.unroll(half):
                        acc[rp, T.ramp((u * 2 + h) * 4, 1, 4)] = _smmla(
                            acc[rp, T.ramp((u * 2 + h) * 4, 1, 4)],
                            words[rb, pair, T.ramp((q * half + rp) * 4, 1, 4)],
                            T.Shuffle([xcol[t, columns[rb, pair, 0] * quads + q, T.ramp(u * 4, 1, 4)],
                                       xcol[t, columns[rb, pair, 1] * quads + q, T.ramp(u * 4, 1, 4)]],
                                      [h * 2, h * 2 + 4, h * 2 + 1, h * 2 + 5]))

    @T.inline
    def body(_src, xcol, yv, qscale):
        for task in T.parallel(tiles * chunks):
            @T.inline
            def pair_row(rb, pairs):
                acc = T.decl_buffer((half, vl * 2), "int32")
                for rp in T.unroll(half):
                    for v in T.vectorized(vl * 2):
                        acc[rp, v] = 0
                for pair in range(pairs):
                    accumulate(acc, xcol, task // chunks, rb, pair)
                for i in T.unroll(br):
                    for v in T.vectorized(vl):
                        store(yv, plan.tile_start(task // chunks), order[rb] * br + i, v,
                              T.Cast("float32", acc[i // 2, v // 2 * 4 + i % 2 * 2 + v % 2])
                              * (row_scales[rb] * qscale[0]))

            each_row(task % chunks, groups, chunks, pair_row)

    return body
