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
buffer first if the conv pads) costs less than writing and re-reading a K x P buffer. One column
(batch-1 linear, or a conv with one output pixel) runs the ``gemv`` form: vector lanes over one block's
weights, inputs pre-replicated per block column. Accumulators are default-scope buffers, for the TVM
0.27 reasons given in ``unified_gemm.py``; the per-task block row is a ``T.let``, since a plain
assignment in TVMScript 0.27 declares a mutable local, which a parallel loop heap-allocates too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import tvm
from tvm.script import tirx as T

from ..format import UnifiedWeight
from .unified_gemm import DEFAULT_LANES, Conv2dGeometry, conv_gather, lane_reduce, pad_copy, pick_lanes, zero


@dataclass
class FreeEll:
    """The free blocks in blocked ELL: per block row ``r`` and slot ``l``, block column and values."""

    rows: int
    cols: int
    columns: np.ndarray  # (nbr, width) int32, 0 in pad slots
    values: np.ndarray  # (nbr, width, rows, cols) float32, 0 in pad slots
    count: int  # free blocks (slots that are not padding)

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

# read(source, k, p0, v) -> X[k, p0 + v]; source is the (padded) input or a view of it.
Reader = Callable[[tvm.tirx.Buffer, object, object, object], object]


def _free_gemm(x_shape: tuple[int, ...], y_shape: tuple[int, ...], source_shape: tuple[int, ...],
               offset: tuple[int, int] | None, read: Reader, store_index: Callable, k_extent: int,
               p_extent: int, vl: int, ell: FreeEll) -> tvm.tirx.PrimFunc:
    """The shared free-block GEMM over tiles of ``vl`` pixels. With an ``offset`` (top, left), the NCHW
    input is first copied into a zero-padded buffer of ``source_shape``, else ``source_shape`` is a view
    of the input; ``read`` gathers from it without bounds checks. ``store_index(p0, row, v)`` indexes
    the output viewed ``[.., O, pixels]``."""
    br, bc, width = ell.rows, ell.cols, ell.width
    nbr = ell.columns.shape[0]
    tiles = p_extent // vl
    per = VECTORS_PER_TASK if tiles % VECTORS_PER_TASK == 0 else 1  # pixel vectors per task
    n = br * bc
    y_view = (y_shape[0], y_shape[1], p_extent // y_shape[0]) if len(y_shape) == 4 else y_shape

    @T.prim_func
    def kernel(x: T.Buffer(x_shape, "float32"), columns: T.Buffer((nbr, width), "int32"),
               values: T.Buffer((nbr, width, br, bc), "float32"), y: T.Buffer(y_shape, "float32")):
        T.func_attr({"tir.noalias": True, "tirx.is_scheduled": True})
        yv = T.decl_buffer(y_view, "float32", data=y.data)
        if offset is None:
            src = T.decl_buffer(source_shape, "float32", data=x.data)
        else:
            src = T.decl_buffer(source_shape, "float32")
            pad_copy(x, src, offset)
        if p_extent == 1:
            vflat = T.decl_buffer((nbr, width, n), "float32", data=values.data)
            xrep = T.decl_buffer((k_extent // bc, n), "float32")
            for kb in T.parallel(k_extent // bc):
                for e in T.vectorized(n):
                    xrep[kb, e] = read(src, kb * bc + e % bc, 0, 0)
            for rb in T.parallel(nbr):
                acc = T.decl_buffer((n,), "float32")
                for e in T.vectorized(n):
                    acc[e] = T.float32(0)
                for slot in range(width):
                    for e in T.vectorized(n):
                        acc[e] = acc[e] + vflat[rb, slot, e] * xrep[columns[rb, slot], e]
                for i in T.unroll(br):
                    yv[store_index(0, rb * br + i, 0)] = lane_reduce(acc, i * bc, bc)
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
                                xv[u, v] = read(src, columns[rb, slot] * bc + j, (task // nbr * per + u) * vl, v)
                        for i in T.unroll(br):
                            for u in T.unroll(per):
                                for v in T.vectorized(vl):
                                    acc[u * br + i, v] = acc[u * br + i, v] + values[rb, slot, i, j] * xv[u, v]
                for u in T.unroll(per):
                    for i in T.unroll(br):
                        for v in T.vectorized(vl):
                            yv[store_index((task // nbr * per + u) * vl, rb * br + i, v)] = acc[u * br + i, v]

    return kernel


def free_conv2d(g: Conv2dGeometry, ell: FreeEll, layout: str, lanes: int = DEFAULT_LANES) -> tvm.tirx.PrimFunc:
    """conv2d with the free blocks of an NCHW/OIHW weight (groups=1) -> PrimFunc(x, columns, values, y)."""
    (kh, kw) = g.kernel
    pt, pl, pb, pr = g.padding
    oh, ow = g.out_hw
    q = oh * ow
    vl = pick_lanes(q, lanes)

    def store_index(p0, row, v):
        return (p0 // q, row, p0 % q + v)

    return _free_gemm(
        (g.batch, g.in_channels, g.height, g.width), (g.batch, g.out_channels, oh, ow),
        (g.batch, g.in_channels, g.height + pt + pb, g.width + pl + pr), None if g.padding == (0,) * 4 else (pt, pl),
        conv_gather(g, layout, vl), store_index, g.in_channels * kh * kw, g.pixels, vl, ell)


def free_dense(batch: int, in_features: int, out_features: int, ell: FreeEll,
               lanes: int = DEFAULT_LANES) -> tvm.tirx.PrimFunc:
    """``x @ Wfree.T`` (x: [batch, in]) -> PrimFunc(x, columns, values, y)."""

    def read(x, k, p0, v):
        return x[p0 + v, k]

    def store_index(p0, row, v):
        return (p0 + v, row)

    return _free_gemm((batch, in_features), (batch, out_features), (batch, in_features), None, read,
                      store_index, in_features, batch, pick_lanes(batch, lanes), ell)


__all__ = ["FreeEll", "free_conv2d", "free_dense", "to_free_ell"]
