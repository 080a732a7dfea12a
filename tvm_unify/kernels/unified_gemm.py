"""TIR kernels for unified weights: conv2d and linear as one block-sparse GEMM, fp32 or int8.

Both ops compute ``Y[O, P] = W[O, K] @ X[K, P]`` with W in blocked ELL (``ell.py``); linear is the GEMM
with P = batch, conv2d an *explicit-im2col GEMM*: a first stage copies the input into a zero-padded
buffer (only if the conv pads) and gathers ``X[k, p]`` (k = input channel and tap in the weight's
layout, p = output pixel) with no bounds checks, vectorized over a tile of pixels that lies in one
output row when it can (contiguous loads at stride 1). A 1x1/stride-1 conv at batch 1 and a batch-1
linear read their input in place. We chose im2col over a direct conv because the GEMM then vectorizes
over pixels whatever the stride, padding and dilation, and the gather is one pass over K*P values,
small against the GEMM on every ResNet-18 / MobileNetV2 layer we measured.

Three GEMM algorithms (``default_algorithm`` picks):

- ``lut`` (fp32, P > 1): per tile of ``lanes`` pixels, a table holds for every group of 4 consecutive
  inputs the 16 signed sums ``+-x0 +-x1 +-x2 +-x3`` (built from two 4-entry halves: 6 vector ops per
  input); a 4-wide block row then costs one lookup, indexed by its 4 sign bits, and one FMA with the
  block's scale, instead of 4 sign flips and 4 adds. The table is rebuilt per task, so tasks split block
  rows only as far as needed for MIN_TASKS-way parallelism. 2.5-4x faster than ``direct`` on 3x3 convs.
- ``direct`` (fp32 or int8): per block, each weight flips the sign of a vector of inputs (XOR of the sign
  bit in fp32; ``(x ^ m) - m`` in int32 for int8) into a per-block partial sum, then one multiply by the
  block's scale per row. Its int8 x +-1 block dot products are the shape ARM ``sdot``/``i8mm`` tensorize.
- ``gemv`` (P == 1, batch-1 linear): vector lanes over one block's ``rows*cols`` weights, sign bits
  applied lane-wise from the block's sign word, inputs pre-replicated per block column (``xrep``).

Register accumulators carry their vector lanes explicitly (TIR's vectorize-with-local-scalars hazard)
and live in default-scope buffers: TVM 0.27 heap-allocates ``local`` buffers inside a parallel loop
(one TVMBackendAllocWorkspace call each), which also kept LLVM from promoting them to registers.

*Tunable by design*: every loop bound is a compile-time constant (blocked ELL pads rows to equal
length), so meta-schedule's DisallowDynamicLoop accepts the access pattern, and each kernel is a
template whose knobs (``lanes``, ``algorithm``, MIN_TASKS, LUT_BITS) a tuner can search. We read the
block pattern from constant arrays rather than unrolling it into code (SparseRT-style): one index load
per block is amortized over a vector of pixels, and code size stays independent of the weight count.

int8: activations are quantized per tensor, ``q = clamp(round(x / act_scale), -127, 127)``, with a given
(calibrated) ``act_scale`` or, when None, ``max|x| / 127`` computed per call; weights are exactly +-1, the
per-block sums accumulate in int32 and are rescaled by ``scale * act_scale``. The quantized im2col
buffer is where the data layout is chosen: it is ``[K, P]`` (pixels contiguous) for vector-over-pixel
hosts; an ARM ``sdot`` schedule wants ``[K/4, P, 4]`` (four consecutive k per pixel), a change confined
to the gather stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import tvm
from tvm.script import tirx as T

from .ell import EllWeight

MODES = ("fp32", "int8")
ALGORITHMS = ("lut", "direct", "gemv")
DEFAULT_LANES = 16
LUT_BITS = 4  # a lookup table holds the 2**4 signed sums of 4 consecutive inputs
MIN_TASKS = 4


@dataclass(frozen=True)
class Conv2dGeometry:
    """Shapes and attributes of an NCHW/OIHW conv2d with groups=1."""

    batch: int
    in_channels: int
    height: int
    width: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    dilation: tuple[int, int] = (1, 1)

    @property
    def out_hw(self) -> tuple[int, int]:
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.stride, self.dilation
        pt, pl, pb, pr = self.padding
        return ((self.height + pt + pb - dh * (kh - 1) - 1) // sh + 1,
                (self.width + pl + pr - dw * (kw - 1) - 1) // sw + 1)

    @property
    def reads_input_in_place(self) -> bool:
        return (self.kernel == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0, 0, 0)
                and self.batch == 1)


def pick_lanes(extent: int, lanes: int) -> int:
    """The largest power of two <= ``lanes`` that divides ``extent`` (a tile never spans images)."""
    v = 1
    while v * 2 <= lanes and extent % (v * 2) == 0:
        v *= 2
    return v


def _sign_field(signs: tvm.tirx.Buffer, rb, slot, bit: int, width: int, word_bits: int):
    """``width`` sign bits (uint32) of block ``(rb, slot)`` from bit ``bit`` (never straddles a word)."""
    word = T.Cast("uint32", signs[rb, slot, bit // word_bits])
    return T.bitwise_and(T.shift_right(word, T.uint32(bit % word_bits)), T.uint32((1 << width) - 1))


def _signed_sum(xcol: tvm.tirx.Buffer, k0, p, pattern, count: int):
    """``sum_j (-1)^bit_j(pattern) * xcol[k0 + j, p]`` for j < count (a constant pattern after unrolling)."""
    total = T.float32(0)
    for j in range(count):
        total = total + T.Cast("float32", 1 - 2 * ((pattern >> j) & 1)) * xcol[k0 + j, p]
    return total


def _lane_reduce(buf: tvm.tirx.Buffer, start: int, count: int, combine=lambda a, b: a + b):
    """``combine`` over ``buf[start:start + count]``, unrolled (horizontal reduction of vector lanes)."""
    total = buf[start]
    for j in range(1, count):
        total = combine(total, buf[start + j])
    return total


def _row_chunks(block_rows: int, tiles: int) -> int:
    """Split block rows into chunks so that there are at least MIN_TASKS parallel tasks (each chunk
    rebuilds its tile's table, so no more chunks than needed)."""
    chunks = 1
    while tiles * chunks < MIN_TASKS and chunks < block_rows:
        chunks += 1
        while block_rows % chunks:
            chunks += 1
    return chunks


def _apply_sign(value, bit, mode: str):
    """``-value`` if ``bit`` else ``value``, without a multiply."""
    if mode == "fp32":
        flipped = T.bitwise_xor(T.reinterpret("uint32", value), T.shift_left(bit, T.uint32(31)))
        return T.reinterpret("float32", flipped)
    mask = T.int32(0) - T.Cast("int32", bit)
    return T.bitwise_xor(T.Cast("int32", value), mask) - mask


@T.macro
def zero(buf, rows, lanes):
    """Zero a ``rows x lanes`` register buffer."""
    for i in T.unroll(rows):
        for v in T.vectorized(lanes):
            buf[i, v] = T.Cast(buf.dtype, 0)


def _quantize(value, inv_scale):
    return T.Cast("int8", T.max(T.min(T.round(value * inv_scale), T.float32(127)), T.float32(-127)))


def _make_kernel(
    x_shape: tuple[int, ...],
    y_shape: tuple[int, ...],
    k_extent: int,
    p_extent: int,
    group: int,
    gather: Callable | None,
    pad: tuple[tuple[int, ...], Callable] | None,
    store_index: Callable,
    ell: EllWeight,
    mode: str,
    act_scale: float | None,
    lanes: int,
    algorithm: str,
) -> tvm.tirx.PrimFunc:
    """The shared GEMM kernel. ``gather(x, k, p0, v)`` is X[k, p0 + v] (None: X is the input itself,
    viewed [K, P]); ``pad = (shape, value(x, n, c, h, w))`` first copies the input into a zero-padded
    buffer that ``gather`` then reads without bounds checks; ``store_index(p0, row, v)`` maps an output
    row and pixel to an index of the output viewed ``y_view``."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    vl = pick_lanes(group, lanes)
    tiles = p_extent // vl
    br, bc, width = ell.rows, ell.cols, ell.width
    nbr = ell.columns.shape[0]
    nword, word_bits, sdtype = ell.signs.shape[2], ell.word_bits, str(ell.signs.dtype)
    xdtype, adtype = ("float32", "float32") if mode == "fp32" else ("int8", "int32")
    x_size = 1
    for d in x_shape:
        x_size *= d
    y_view = (y_shape[0], y_shape[1], p_extent // y_shape[0]) if len(y_shape) == 4 else y_shape
    dynamic_scale = mode == "int8" and act_scale is None
    x_lanes = pick_lanes(x_size, lanes)
    if (algorithm not in ALGORITHMS or (algorithm == "lut" and mode != "fp32")
            or (algorithm == "gemv" and p_extent != 1)):
        raise ValueError(f"algorithm {algorithm!r} does not exist for mode {mode} and {p_extent} columns")
    g = min(bc, LUT_BITS)  # sign bits per table lookup
    nent, g_low = 1 << g, min(g, 2)
    nlow = 1 << g_low
    chunks = _row_chunks(nbr, tiles)
    given_inv = 1.0 / act_scale if act_scale else 1.0

    @T.prim_func
    def kernel(x: T.Buffer(x_shape, "float32"), columns: T.Buffer((nbr, width), "int32"),
               scales: T.Buffer((nbr, width), "float32"), signs: T.Buffer((nbr, width, nword), sdtype),
               y: T.Buffer(y_shape, "float32")):
        T.func_attr({"tir.noalias": True, "tirx.is_scheduled": True})
        xflat = T.decl_buffer((x_size,), "float32", data=x.data)
        yv = T.decl_buffer(y_view, "float32", data=y.data)
        qscale = T.decl_buffer((1,), "float32")
        if dynamic_scale:
            amax = T.decl_buffer((x_lanes,), "float32")
            for v in T.vectorized(x_lanes):
                amax[v] = T.float32(1e-30)
            for i in range(x_size // x_lanes):
                for v in T.vectorized(x_lanes):
                    amax[v] = T.max(amax[v], T.abs(xflat[i * x_lanes + v]))
            qscale[0] = _lane_reduce(amax, 0, x_lanes, T.max) / T.float32(127)
        else:
            qscale[0] = T.float32(1.0 / given_inv)
        if pad is None:
            xp = T.decl_buffer(x_shape, "float32", data=x.data)
        else:
            xp = T.decl_buffer(pad[0], "float32")
            for n in range(pad[0][0]):
                for c in T.parallel(pad[0][1]):
                    for h in range(pad[0][2]):
                        for w in range(pad[0][3]):
                            xp[n, c, h, w] = pad[1](x, n, c, h, w)
        if gather is None and mode == "fp32":
            xcol = T.decl_buffer((k_extent, p_extent), "float32", data=x.data)
        else:
            xcol = T.decl_buffer((k_extent, p_extent), xdtype)
            inv = T.float32(1) / qscale[0]
            for k in T.parallel(k_extent):
                for t in range(tiles):
                    for v in T.vectorized(vl):
                        if mode == "fp32":
                            xcol[k, t * vl + v] = gather(xp, k, t * vl, v)
                        elif gather is None:
                            xcol[k, t * vl + v] = _quantize(xflat[k * p_extent + t * vl + v], inv)
                        else:
                            xcol[k, t * vl + v] = _quantize(gather(xp, k, t * vl, v), inv)
        if algorithm == "gemv":
            xrep = T.decl_buffer((k_extent // bc, br * bc), xdtype)
            for c in T.parallel(k_extent // bc):
                for e in T.vectorized(br * bc):
                    xrep[c, e] = xcol[c * bc + e % bc, 0]
            for task in T.parallel(nbr):
                acc = T.decl_buffer((br * bc,), "float32")
                for e in T.vectorized(br * bc):
                    acc[e] = T.float32(0)
                for slot in range(width):
                    for e in T.vectorized(br * bc):
                        acc[e] = acc[e] + scales[task, slot] * T.Cast("float32", _apply_sign(
                            xrep[columns[task, slot], e],
                            _sign_field(signs, task, slot, e, 1, word_bits), mode))
                for i in T.unroll(br):
                    yv[store_index(0, task * br + i, 0)] = _lane_reduce(acc, i * bc, bc) * qscale[0]
        elif algorithm == "lut":
            for task in T.parallel(tiles * chunks):
                lut = T.decl_buffer((k_extent // g, nent, vl), "float32")
                for r in range(k_extent // g):
                    low = T.decl_buffer((4, vl), "float32")
                    high = T.decl_buffer((4, vl), "float32")
                    for q in T.unroll(nlow):
                        for v in T.vectorized(vl):
                            low[q, v] = _signed_sum(xcol, r * g, task // chunks * vl + v, q, g_low)
                    for q in T.unroll(nent // nlow):
                        for v in T.vectorized(vl):
                            high[q, v] = _signed_sum(xcol, r * g + g_low, task // chunks * vl + v, q, g - g_low)
                    for pat in T.unroll(nent):
                        for v in T.vectorized(vl):
                            lut[r, pat, v] = low[pat % nlow, v] + high[pat // nlow, v]
                for rr in range(nbr // chunks):
                    rb = task % chunks * (nbr // chunks) + rr
                    acc = T.decl_buffer((br, vl), "float32")
                    part = T.decl_buffer((br, vl), "float32")
                    zero(acc, br, vl)
                    for slot in range(width):
                        zero(part, br, vl)
                        for i in T.unroll(br):
                            for gi in T.unroll(bc // g):
                                for v in T.vectorized(vl):
                                    part[i, v] = part[i, v] + lut[
                                        columns[rb, slot] * (bc // g) + gi,
                                        _sign_field(signs, rb, slot, i * bc + gi * g, g, word_bits), v]
                            for v in T.vectorized(vl):
                                acc[i, v] = acc[i, v] + part[i, v] * scales[rb, slot]
                    for i in T.unroll(br):
                        for v in T.vectorized(vl):
                            yv[store_index(task // chunks * vl, rb * br + i, v)] = acc[i, v]
        else:
            for task in T.parallel(tiles * nbr):
                rb = task % nbr
                acc = T.decl_buffer((br, vl), "float32")
                part = T.decl_buffer((br, vl), adtype)
                zero(acc, br, vl)
                for slot in range(width):
                    zero(part, br, vl)
                    for j in T.unroll(bc):
                        for i in T.unroll(br):
                            for v in T.vectorized(vl):
                                part[i, v] = part[i, v] + _apply_sign(
                                    xcol[columns[rb, slot] * bc + j, task // nbr * vl + v],
                                    _sign_field(signs, rb, slot, i * bc + j, 1, word_bits), mode)
                    for i in T.unroll(br):
                        for v in T.vectorized(vl):
                            acc[i, v] = acc[i, v] + T.Cast("float32", part[i, v]) * scales[rb, slot]
                for i in T.unroll(br):
                    for v in T.vectorized(vl):
                        yv[store_index(task // nbr * vl, rb * br + i, v)] = acc[i, v] * qscale[0]

    return kernel


def _tap_decoder(layout: str, channels: int, kh: int, kw: int) -> Callable:
    """k -> (c, r, s) for the weight's matrix layout (see ``format.py``)."""
    if layout == "tap":
        return lambda k: (k % channels, k // channels // kw, k // channels % kw)
    return lambda k: (k // (kh * kw), k // kw % kh, k % kw)


def default_algorithm(mode: str, columns: int) -> str:
    """One column (batch-1 linear): ``gemv``, vector lanes over a block's weights. Else fp32: table
    lookups (fewest vector ops on any CPU); int8: the direct sign-apply loop, whose int8 x +-1 block
    dot products are what ARM sdot/i8mm tensorize."""
    if columns == 1:
        return "gemv"
    return "lut" if mode == "fp32" else "direct"


def unified_conv2d(g: Conv2dGeometry, ell: EllWeight, layout: str, mode: str = "fp32",
                   act_scale: float | None = None, lanes: int = DEFAULT_LANES,
                   algorithm: str | None = None) -> tvm.tirx.PrimFunc:
    """conv2d (NCHW x OIHW-unified, groups=1) -> PrimFunc(x, columns, scales, signs, y)."""
    (kh, kw), (sh, sw), (dh, dw) = g.kernel, g.stride, g.dilation
    pt, pl, pb, pr = g.padding
    oh, ow = g.out_hw
    q = oh * ow
    vl_conv = pick_lanes(q, lanes)
    pad_shape = (g.batch, g.in_channels, g.height + pt + pb, g.width + pl + pr)
    decode = _tap_decoder(layout, g.in_channels, kh, kw)

    def gather(xp, k, p0, v):
        c, r, s = decode(k)
        if ow % vl_conv == 0:  # a tile lies inside one output row: contiguous loads when stride is 1
            oh_, ow_ = p0 % q // ow, p0 % ow + v
        else:
            oh_, ow_ = (p0 % q + v) // ow, (p0 % q + v) % ow
        return xp[p0 // q, c, oh_ * sh + r * dh, ow_ * sw + s * dw]

    def padded(x, n, c, h, w):
        inside = tvm.tirx.all(h >= pt, h < pt + g.height, w >= pl, w < pl + g.width)
        return T.if_then_else(inside, x[n, c, h - pt, w - pl], T.float32(0))

    def store_index(p0, row, v):
        return (p0 // q, row, p0 % q + v)

    return _make_kernel(
        (g.batch, g.in_channels, g.height, g.width), (g.batch, g.out_channels, oh, ow),
        g.in_channels * kh * kw, g.batch * q, q, gather=None if g.reads_input_in_place else gather,
        pad=None if g.padding == (0, 0, 0, 0) else (pad_shape, padded), store_index=store_index, ell=ell,
        mode=mode, act_scale=act_scale, lanes=lanes, algorithm=algorithm or default_algorithm(mode, g.batch * q))


def unified_dense(batch: int, in_features: int, out_features: int, ell: EllWeight, mode: str = "fp32",
                  act_scale: float | None = None, lanes: int = DEFAULT_LANES,
                  algorithm: str | None = None) -> tvm.tirx.PrimFunc:
    """``x @ W.T`` (x: [batch, in], W unified [out, in]) -> PrimFunc(x, columns, scales, signs, y)."""

    def gather(x, k, p0, v):
        return x[p0 + v, k]

    def store_index(p0, row, v):
        return (p0 + v, row)

    return _make_kernel((batch, in_features), (batch, out_features), in_features, batch, batch,
                        gather=None if batch == 1 else gather, pad=None, store_index=store_index, ell=ell,
                        mode=mode, act_scale=act_scale, lanes=lanes,
                        algorithm=algorithm or default_algorithm(mode, batch))


__all__ = ["ALGORITHMS", "Conv2dGeometry", "DEFAULT_LANES", "MODES", "default_algorithm", "pick_lanes",
           "unified_conv2d", "unified_dense"]
