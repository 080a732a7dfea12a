"""The ``gemv`` algorithm (P == 1, a batch-1 linear): vector lanes over one block's ``rows * cols``
weights, sign bits applied lane-wise from the block's sign word, inputs pre-replicated per block
column (``xrep``), so each block is one vector sign-apply and one vector FMA with its scale."""

from __future__ import annotations

from typing import Callable

from tvm.script import tirx as T

from .common import apply_sign, each_row, lane_reduce, sign_bit, xcol_at
from .gemm import GemmPlan


def gemv_body(plan: GemmPlan) -> Callable:
    """The block GEMV over ``plan`` (its weight is an ``EllWeight``)."""
    weight, mode, k_extent = plan.weight, plan.options.mode, plan.problem.k_extent
    columns, scales, signs, order = (plan.buffers[name] for name in ("columns", "scales", "signs", "order"))
    br, bc, chunks, groups = weight.rows, weight.cols, plan.chunks, weight.groups
    store, xdtype = plan.store, plan.xdtype
    n = br * bc

    @T.inline
    def body(_src, xcol, yv, qscale):
        xrep = T.decl_buffer((k_extent // bc, n), xdtype)
        for c in T.parallel(k_extent // bc):
            for e in T.vectorized(n):
                xrep[c, e] = xcol_at(xcol, c * bc + e % bc, 0, 0, 0)
        for task in T.parallel(chunks):
            @T.inline
            def gemv_row(rb, slots):
                acc = T.decl_buffer((n,), "float32")
                for e in T.vectorized(n):
                    acc[e] = T.float32(0)
                for slot in range(slots):
                    for e in T.vectorized(n):
                        acc[e] = acc[e] + scales[rb, slot] * T.Cast("float32", apply_sign(
                            xrep[columns[rb, slot], e], sign_bit(signs, rb, slot, e), mode))
                for i in T.unroll(br):
                    store(yv, 0, order[rb] * br + i, 0, lane_reduce(acc, i * bc, bc) * qscale[0])

            each_row(task, groups, chunks, gemv_row)

    return body
