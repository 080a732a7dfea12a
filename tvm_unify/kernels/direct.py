"""The ``direct`` algorithm (fp32 or int8): sign-apply then sum, one multiply per block.

Per block, each weight flips the sign of a vector of staged inputs (XOR of the sign bit in fp32;
``(x ^ m) - m`` in int32 for int8) into a per-block partial sum, then one multiply by the block's scale
per row. Its int8 x +-1 block dot products are the shape ARM ``sdot``/``i8mm`` tensorize.
"""

from __future__ import annotations

from typing import Callable

from tvm.script import tirx as T

from .common import apply_sign, each_row, sign_bit, xcol_at, zero
from .gemm import GemmPlan


def direct_body(plan: GemmPlan) -> Callable:
    """The sign-apply GEMM over ``plan`` (its weight is an ``EllWeight``, its input staged)."""
    weight, mode = plan.weight, plan.options.mode
    columns, scales, signs, order = (plan.buffers[name] for name in ("columns", "scales", "signs", "order"))
    br, bc = weight.rows, weight.cols
    adtype = "float32" if mode == "fp32" else "int32"
    vl, tiles, chunks, groups, store = plan.vl, plan.tiles, plan.chunks, weight.groups, plan.store

    @T.inline
    def body(_src, xcol, yv, qscale):
        for task in T.parallel(tiles * chunks):
            @T.inline
            def direct_row(rb, slots):
                acc = T.decl_buffer((br, vl), "float32")
                part = T.decl_buffer((br, vl), adtype)
                zero(acc, br, vl)
                for slot in range(slots):
                    zero(part, br, vl)
                    for j in T.unroll(bc):
                        for i in T.unroll(br):
                            for v in T.vectorized(vl):
                                part[i, v] = part[i, v] + apply_sign(
                                    xcol_at(xcol, columns[rb, slot] * bc + j, task // chunks, plan.tile_start(task // chunks), v),
                                    sign_bit(signs, rb, slot, i * bc + j), mode)
                    for i in T.unroll(br):
                        for v in T.vectorized(vl):
                            acc[i, v] = acc[i, v] + T.Cast("float32", part[i, v]) * scales[rb, slot]
                for i in T.unroll(br):
                    for v in T.vectorized(vl):
                        store(yv, plan.tile_start(task // chunks), order[rb] * br + i, v, acc[i, v] * qscale[0])

            each_row(task % chunks, groups, chunks, direct_row)

    return body
