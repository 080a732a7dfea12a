"""The ``lut`` algorithm (fp32, P > 1): table lookups instead of sign flips.

Per tile of ``lanes`` pixels, a table holds for every group of 4 consecutive inputs the 16 signed sums
``+-x0 +-x1 +-x2 +-x3`` (built from two 4-entry halves: 6 vector ops per input); a 4-wide block row
then costs one lookup and one FMA with the block's scale, instead of 4 sign flips and 4 adds. The entry
each lookup reads (block column and its 4 sign bits) is precomputed (``ell.LutWeight``), so a lookup is
one scalar load. A task builds its tile's table, so tasks split block rows only as far as needed for
``tasks``-way parallelism, ``tasks`` being the device's cores: with fewer tasks a core idles, with more
a core builds the same table twice (one table shared by all tasks was 3x slower on 2 cores, where each
core reads the half the other one wrote). 2.5-4x faster than ``direct`` on 3x3 convs. The tables are
built straight from the (padded) input: a tile's inputs stay in cache across the taps.
"""

from __future__ import annotations

from typing import Callable

import tvm
from tvm.script import tirx as T

from .common import each_row, x_at, zero
from .gemm import GemmPlan


def _signed_sum(src: tvm.tirx.Buffer, gather: Callable | None, k0, p0, v, pattern, count: int):
    """``sum_j (-1)^bit_j(pattern) * X[k0 + j, p0 + v]`` for j < count (a constant pattern after
    unrolling)."""
    total = T.float32(0)
    for j in range(count):
        total = total + T.Cast("float32", 1 - 2 * ((pattern >> j) & 1)) * x_at(src, gather, k0 + j, p0, v)
    return total


def _lookups(lut: tvm.tirx.Buffer, entries: tvm.tirx.Buffer, rb, slot, i: int, v, lookups: int):
    """Block row ``i`` of block ``(rb, slot)`` times the tile's inputs: the sum of its table lookups."""
    total = lut[T.Cast("int32", entries[rb, slot, i * lookups]), v]
    for j in range(1, lookups):
        total = total + lut[T.Cast("int32", entries[rb, slot, i * lookups + j]), v]
    return total


def lut_body(plan: GemmPlan) -> Callable:
    """The table-lookup GEMM over ``plan`` (its weight is a ``LutWeight``)."""
    weight, gather, k_extent = plan.weight, plan.problem.gather, plan.problem.k_extent
    entries, scales, order = (plan.buffers[name] for name in ("entries", "scales", "order"))
    br, bc, g = weight.rows, weight.cols, weight.bits
    nent, g_low = 1 << g, min(g, 2)
    nlow = 1 << g_low
    vl, tiles, chunks, groups, store = plan.vl, plan.tiles, plan.chunks, weight.groups, plan.store

    @T.inline
    def fill_table(src, lut, r, p0):
        """The table entries of input group ``r``: the signed sums of its g inputs at pixels p0.."""
        low = T.decl_buffer((4, vl), "float32")
        high = T.decl_buffer((4, vl), "float32")
        for q in T.unroll(nlow):
            for v in T.vectorized(vl):
                low[q, v] = _signed_sum(src, gather, r * g, p0, v, q, g_low)
        for q in T.unroll(nent // nlow):
            for v in T.vectorized(vl):
                high[q, v] = _signed_sum(src, gather, r * g + g_low, p0, v, q, g - g_low)
        for pat in T.unroll(nent):
            for v in T.vectorized(vl):
                lut[r * nent + pat, v] = low[pat % nlow, v] + high[pat // nlow, v]

    @T.inline
    def body(src, _xcol, yv, _qscale):
        for task in T.parallel(tiles * chunks):
            lut = T.decl_buffer((k_extent // g * nent, vl), "float32")
            for r in range(k_extent // g):
                fill_table(src, lut, r, plan.tile_start(task // chunks))

            @T.inline
            def lut_row(rb, slots):
                acc = T.decl_buffer((br, vl), "float32")
                zero(acc, br, vl)
                for slot in range(slots):
                    for i in T.unroll(br):
                        for v in T.vectorized(vl):
                            acc[i, v] = acc[i, v] + scales[rb, slot] * _lookups(lut, entries, rb, slot, i, v, bc // g)
                for i in T.unroll(br):
                    for v in T.vectorized(vl):
                        store(yv, plan.tile_start(task // chunks), order[rb] * br + i, v, acc[i, v])

            each_row(task % chunks, groups, chunks, lut_row)

    return body
