"""TIR kernels for the *free* (dense-valued) blocks of a unified weight: a block-sparse fp32 GEMM.

A spec with ``allow_free`` keeps some surviving blocks dense (``format.py``: the free BSR part). Their
product ``Y[O, P] = Wfree[O, K] @ X[K, P]`` is computed by its own kernel, and ``LowerUnifiedBlocks``
adds it to the unified kernel's output: the unified kernels stay sign + scale only (their lookup
tables and int8 sign tricks have no room for arbitrary values), and an epilogue pass can fold the add
into the unified kernel's store. The free part is always fp32, also next to an int8 unified kernel:
its weights are not +-1, so quantizing would cost accuracy for a small share of the work.

Layout: blocked ELL like the unified part (``ell.py``): block rows padded to equal length with zero
values, so every loop bound is a compile-time constant; values are stored per block, row-major.

Schedule (hand-written, ``tirx.is_scheduled``): conv2d and batched linear run one parallel task per
(``VECTORS_PER_TASK`` vectors of pixels, block row), with a register accumulator per block row and
pixel vector. Unlike the unified kernels there is no im2col buffer: free blocks are few, so each input
column X[k, :] is read about once, and gathering it straight from the input (copied into a zero-padded
buffer first if the conv pads) costs less than writing and re-reading a K x P buffer. It runs in the
shared frame (``gemm.py``) like the unified kernels. One column
(batch-1 linear, or a conv with one output pixel) runs the ``gemv`` form: vector lanes over one block's
weights, inputs pre-replicated per block column. Accumulators are default-scope buffers, for the TVM
0.27 reasons given in ``common.py``; the per-task block row is a ``T.let``, since a plain
assignment in TVMScript 0.27 declares a mutable local, which a parallel loop heap-allocates too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import tvm
from tvm.script import tirx as T

from ..format import UnifiedWeight
from .common import Conv2dGeometry, GemmProblem, conv2d_problem, dense_problem, lane_reduce, x_at, zero
from .gemm import DEFAULT_LANES, GemmPlan, KernelOptions, gemm_kernel, plan_gemm


@dataclass
class FreeEll:
    """The free blocks in blocked ELL: per block row ``r`` and slot ``l``, block column and values."""

    rows: int
    cols: int
    columns: np.ndarray  # (nbr, width) int32, 0 in pad slots
    values: np.ndarray  # (nbr, width, rows, cols) float32, 0 in pad slots
    count: int  # free blocks (slots that are not padding)

    @property
    def arrays(self) -> tuple[np.ndarray, ...]:
        """The kernel's constant arguments, in parameter order."""
        return (self.columns, self.values)

    @property
    def width(self) -> int:
        return int(self.columns.shape[1])

    @property
    def padding(self) -> float:
        """Fraction of slots that are padding (they cost as much as real blocks)."""
        return 1.0 - self.count / self.columns.size if self.columns.size else 0.0

    @property
    def nbytes(self) -> int:
        return int(self.columns.nbytes + self.values.nbytes)


def to_free_ell(enc: UnifiedWeight) -> FreeEll:
    """Pad the free BSR part of ``enc`` to equal-length block rows."""
    rows, cols = enc.spec.shape
    nbr = enc.grid[0]
    count = int(enc.free_indices.size)
    counts = np.diff(enc.free_indptr)
    width = max(int(counts.max(initial=0)), 1)
    slot = np.arange(count) - np.repeat(enc.free_indptr[:-1], counts)
    row = np.repeat(np.arange(nbr), counts)
    columns = np.zeros((nbr, width), dtype=np.int32)
    values = np.zeros((nbr, width, rows, cols), dtype=np.float32)
    columns[row, slot] = enc.free_indices
    values[row, slot] = enc.free_values
    return FreeEll(rows, cols, columns, values, count)


# Vectors of pixels per task and output row: 2 * rows independent FMA chains per task hide the FMA
# latency (with one, a 4x4 block's 4 chains were latency bound).
VECTORS_PER_TASK = 2


def free_body(plan: GemmPlan) -> Callable:
    """The free-block GEMM over ``plan``'s tiles of ``vl`` pixels (its weight is a ``FreeEll``)."""
    ell, gather, k_extent = plan.weight, plan.problem.gather, plan.problem.k_extent
    columns, values = plan.buffers["columns"], plan.buffers["values"]
    br, bc, width, nbr = ell.rows, ell.cols, ell.width, ell.columns.shape[0]
    vl, tiles, store = plan.vl, plan.tiles, plan.store
    per = VECTORS_PER_TASK if tiles % VECTORS_PER_TASK == 0 else 1  # pixel vectors per task
    n = br * bc
    gemv = plan.problem.p_extent == 1

    @T.inline
    def body(src, _xcol, yv, _qscale):
        if gemv:
            vflat = T.decl_buffer((nbr, width, n), "float32", data=values.data)
            xrep = T.decl_buffer((k_extent // bc, n), "float32")
            for kb in T.parallel(k_extent // bc):
                for e in T.vectorized(n):
                    xrep[kb, e] = x_at(src, gather, kb * bc + e % bc, 0, 0)
            for rb in T.parallel(nbr):
                acc = T.decl_buffer((n,), "float32")
                for e in T.vectorized(n):
                    acc[e] = T.float32(0)
                for slot in range(width):
                    for e in T.vectorized(n):
                        acc[e] = acc[e] + vflat[rb, slot, e] * xrep[columns[rb, slot], e]
                for i in T.unroll(br):
                    store(yv, 0, rb * br + i, 0, lane_reduce(acc, i * bc, bc))
        else:
            for task in T.parallel(tiles // per * nbr):
                rb: T.let[T.int32] = task % nbr
                acc = T.decl_buffer((per * br, vl), "float32")
                xv = T.decl_buffer((per, vl), "float32")
                zero(acc, per * br, vl)
                for slot in range(width):
                    for j in T.unroll(bc):
                        for u in T.unroll(per):
                            for v in T.vectorized(vl):
                                xv[u, v] = x_at(src, gather, columns[rb, slot] * bc + j,
                                                plan.tile_start(task // nbr * per + u), v)
                        for i in T.unroll(br):
                            for u in T.unroll(per):
                                for v in T.vectorized(vl):
                                    acc[u * br + i, v] = acc[u * br + i, v] + values[rb, slot, i, j] * xv[u, v]
                for u in T.unroll(per):
                    for i in T.unroll(br):
                        for v in T.vectorized(vl):
                            store(yv, plan.tile_start(task // nbr * per + u), rb * br + i, v, acc[u * br + i, v])

    return body


def _free_kernel(problem: GemmProblem, ell: FreeEll, lanes: int) -> tvm.tirx.PrimFunc:
    return gemm_kernel(plan_gemm(problem, ell, ("columns", "values"), KernelOptions(lanes=lanes), 1, overlap=True),
                       free_body)


def free_conv2d(g: Conv2dGeometry, ell: FreeEll, layout: str, lanes: int = DEFAULT_LANES) -> tvm.tirx.PrimFunc:
    """conv2d with the free blocks of an NCHW/OIHW weight (groups=1) -> PrimFunc(x, columns, values, y)."""
    return _free_kernel(conv2d_problem(g, layout, lanes, in_place=False), ell, lanes)


def free_dense(batch: int, in_features: int, out_features: int, ell: FreeEll,
               lanes: int = DEFAULT_LANES) -> tvm.tirx.PrimFunc:
    """``x @ Wfree.T`` (x: [batch, in]) -> PrimFunc(x, columns, values, y)."""
    return _free_kernel(dense_problem(batch, in_features, out_features, in_place=False), ell, lanes)


__all__ = ["FreeEll", "free_conv2d", "free_dense", "to_free_ell"]
