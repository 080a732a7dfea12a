"""What every block-sparse GEMM kernel shares: the op as a GEMM problem (conv geometry, the implicit
im2col gather, the zero-padded copy, where each output lands), vector lanes, sign and int8 helpers,
and the static iteration over a weight's row groups.

Both ops compute ``Y[O, P] = W[O, K] @ X[K, P]``; linear is the GEMM with P = batch, conv2d an
*implicit-im2col GEMM*: ``X[k, p]`` (k = input channel and tap in the weight's layout, p = output pixel)
is gathered from the input, first copied into a zero-padded buffer if the conv pads so that the gather
needs no bounds checks, and vectorized over a tile of pixels that lies in one output row when it can
(contiguous loads at stride 1). We chose im2col over a direct conv because the GEMM then vectorizes over
pixels whatever the stride, padding and dilation. A 1x1/stride-1 conv at batch 1 and a batch-1 linear
read their input in place (``gather`` None: the input viewed ``[K, P]``).

Register accumulators carry their vector lanes explicitly (TIR's vectorize-with-local-scalars hazard)
and live in default-scope buffers: TVM 0.27 heap-allocates ``local`` buffers inside a parallel loop
(one TVMBackendAllocWorkspace call each), which also kept LLVM from promoting them to registers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import tvm
from tvm.script import tirx as T


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
    def input_shape(self) -> tuple[int, int, int, int]:
        """The NCHW shape of the input."""
        return (self.batch, self.in_channels, self.height, self.width)

    @property
    def pixels(self) -> int:
        """Output pixels over the batch: the GEMM's column count P."""
        oh, ow = self.out_hw
        return self.batch * oh * ow

    @property
    def reads_input_in_place(self) -> bool:
        return (self.kernel == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0, 0, 0)
                and self.batch == 1)


@dataclass(frozen=True)
class GemmProblem:
    """An op as ``Y[O, P] = W[O, K] @ X[K, P]`` over its own tensors.

    ``gather(src, k, p0, v)`` is X[k, p0 + v] read from ``src`` (the input, or its zero-padded copy);
    None: the input itself viewed [K, P]. ``pad = (shape, (top, left))`` asks for the zero-padded copy
    first. ``store_index(p0, row, v)`` maps an output row and pixel to an index of the output viewed
    ``y_view``. ``group`` is the pixels per image (a tile never spans images)."""

    x_shape: tuple[int, ...]
    y_shape: tuple[int, ...]
    k_extent: int
    p_extent: int
    group: int
    gather: Callable | None
    pad: tuple[tuple[int, ...], tuple[int, int]] | None
    store_index: Callable
    words: WordGather | None = None

    @property
    def y_view(self) -> tuple[int, ...]:
        """The output as [batch, O, pixels] (conv) or [batch, O] (linear)."""
        y = self.y_shape
        return (y[0], y[1], self.p_extent // y[0]) if len(y) == 4 else y

    @property
    def x_size(self) -> int:
        size = 1
        for d in self.x_shape:
            size *= d
        return size

    def lanes(self, lanes: int) -> int:
        """The vector width of a pixel tile: the largest power of two <= ``lanes`` that divides ``group``."""
        return pick_lanes(self.group, lanes)

    def overlapping_lanes(self, lanes: int) -> int:
        """The vector width of a pixel tile when tiles may overlap (``GemmPlan.tile_start``): the largest
        power of two <= ``lanes`` and ``group``. A 7x7 output (49 pixels, odd) gets 16 lanes, not 1."""
        return tile_lanes(self.group, lanes)


@dataclass(frozen=True)
class WordGather:
    """X read as int32 words of 4 consecutive k from an int8 copy of the input, for the int8
    dot-product kernels: the input is quantized once (not once per use: a 3x3 conv's im2col reads every
    input 9 times) into a copy of (batch, rows, cols, channels) = ``shape`` with zero borders where the
    conv pads (the input lands at ``offset``), laid out ``[batch, rows, channels / 4, cols, 4]``: a word
    of 4 channels at one tap is one 32-bit load, and the words of neighbouring pixels are neighbours
    (a stride-1 conv copies a row of them with vector loads). ``pixels`` = (images, rows, cols)
    enumerates the GEMM's columns (p = (image * rows + row) * cols + col) and ``word(copy_words, kq,
    image, row, col)`` is X[4kq..4kq+3, p] from the copy viewed as words ``[batch, rows, channels / 4, cols]``."""

    shape: tuple[int, int, int, int]
    offset: tuple[int, int]
    input_hw: tuple[int, int]
    pixels: tuple[int, int, int]
    word: Callable

    def load(self, x: tvm.tirx.Buffer, b, c, h, w):
        """Input element (b, c, h, w) of an NCHW input, or (b, c) of a [batch, features] one."""
        return x[b, c, h, w] if len(x.shape) == 4 else x[b, c]


def pick_lanes(extent: int, lanes: int) -> int:
    """The largest power of two <= ``lanes`` that divides ``extent``."""
    v = 1
    while v * 2 <= lanes and extent % (v * 2) == 0:
        v *= 2
    return v


def tile_lanes(extent: int, lanes: int) -> int:
    """The largest power of two <= ``lanes`` and ``extent``."""
    v = 1
    while v * 2 <= min(extent, lanes):
        v *= 2
    return v


def conv2d_problem(g: Conv2dGeometry, layout: str, lanes: int, in_place: bool = True) -> GemmProblem:
    """The GEMM of a conv2d whose weight matrix is in ``layout`` (``format.py``); ``in_place`` lets a
    1x1/stride-1 batch-1 conv read its input directly."""
    kh, kw = g.kernel
    pt, pl, pb, pr = g.padding
    oh, ow = g.out_hw
    q = oh * ow

    def store_index(p0, row, v):
        return (p0 // q, row, p0 % q + v)

    pad_shape = (g.batch, g.in_channels, g.height + pt + pb, g.width + pl + pr)
    direct = in_place and g.reads_input_in_place
    return GemmProblem(g.input_shape, (g.batch, g.out_channels, oh, ow),
                       g.in_channels * kh * kw, g.pixels, q,
                       None if direct else conv_gather(g, layout, tile_lanes(q, lanes)),
                       None if g.padding == (0, 0, 0, 0) else (pad_shape, (pt, pl)), store_index,
                       conv_words(g, layout))


def conv_words(g: Conv2dGeometry, layout: str) -> WordGather | None:
    """The word view of a conv's X, when 4 consecutive k are 4 channels of one tap (the
    ``tap`` layout with channels a multiple of 4); else None (the kernels stage from the float input)."""
    if (layout != "tap" and g.kernel != (1, 1)) or g.in_channels % 4:
        return None
    (kh, kw), (sh, sw), (dh, dw) = g.kernel, g.stride, g.dilation
    pt, pl, pb, pr = g.padding
    decode = tap_decoder("tap", g.in_channels, kh, kw)

    def word(xw, kq, image, row, col):
        c, r, s = decode(kq * 4)
        return xw[image, row * sh + r * dh, c // 4, col * sw + s * dw]

    return WordGather((g.batch, g.height + pt + pb, g.width + pl + pr, g.in_channels), (pt, pl),
                      (g.height, g.width), (g.batch, *g.out_hw), word)


def dense_problem(batch: int, in_features: int, out_features: int, in_place: bool = True) -> GemmProblem:
    """The GEMM of ``x @ W.T`` (x: [batch, in]); ``in_place`` lets a batch-1 linear read x directly."""

    def gather(x, k, p0, v):
        return x[p0 + v, k]

    def store_index(p0, row, v):
        return (p0 + v, row)

    def word(xw, kq, _image, _row, col):
        return xw[col, 0, kq, 0]

    words = WordGather((batch, 1, 1, in_features), (0, 0), (1, 1), (1, 1, batch), word) if in_features % 4 == 0 else None
    return GemmProblem((batch, in_features), (batch, out_features), in_features, batch, batch,
                       None if in_place and batch == 1 else gather, None, store_index, words)


def tap_decoder(layout: str, channels: int, kh: int, kw: int) -> Callable:
    """k -> (c, r, s) for the weight's matrix layout (see ``format.py``)."""
    if layout == "tap":
        return lambda k: (k % channels, k // channels // kw, k // channels % kw)
    return lambda k: (k // (kh * kw), k // kw % kh, k % kw)


def conv_gather(g: Conv2dGeometry, layout: str, vl: int) -> Callable:
    """``gather(xp, k, p0, v)`` = X[k, p0 + v] of the conv's im2col view, read from the zero-padded
    input ``xp``: k decodes to (channel, tap) in the weight's layout; a tile of ``vl`` pixels stays in
    (contiguous loads at stride 1). Tiles of ``vl`` stay in one row when ``vl`` divides the row; with
    ``tile_lanes`` that holds for divisible and overlapping tiles alike (a ``vl`` that divides the row
    divides the image, so its tiles do not overlap)."""
    (kh, kw), (sh, sw), (dh, dw) = g.kernel, g.stride, g.dilation
    oh, ow = g.out_hw
    q = oh * ow
    decode = tap_decoder(layout, g.in_channels, kh, kw)

    def gather(xp, k, p0, v):
        c, r, s = decode(k)
        if ow % vl == 0:
            row, col = p0 % q // ow, p0 % ow + v
        else:
            row, col = (p0 % q + v) // ow, (p0 % q + v) % ow
        return xp[p0 // q, c, row * sh + r * dh, col * sw + s * dw]

    return gather


def x_at(src: tvm.tirx.Buffer, gather: Callable | None, k, p0, v):
    """X[k, p0 + v] of the GEMM's input: ``gather(src, ...)`` from the (padded) input, or, with no
    gather, the input itself viewed ``[K, P]``."""
    return src[k, p0 + v] if gather is None else gather(src, k, p0, v)


def xcol_at(xcol: tvm.tirx.Buffer, k, t, p0, v):
    """X[k, p0 + v] of tile ``t`` (starting at pixel ``p0``) from the staged GEMM input: tile-major
    ``[tiles, K, vl]`` (a tile's K x vl values contiguous, so a kernel walking K for one tile streams
    through memory), or the input itself viewed ``[K, P]``."""
    return xcol[t, k, v] if len(xcol.shape) == 3 else xcol[k, p0 + v]


def lane_reduce(buf: tvm.tirx.Buffer, start: int, count: int, combine=lambda a, b: a + b):
    """``combine`` over ``buf[start:start + count]``, unrolled (horizontal reduction of vector lanes)."""
    total = buf[start]
    for j in range(1, count):
        total = combine(total, buf[start + j])
    return total


@T.macro
def zero(buf, rows, lanes):
    """Zero a ``rows x lanes`` register buffer."""
    for i in T.unroll(rows):
        for v in T.vectorized(lanes):
            buf[i, v] = T.Cast(buf.dtype, 0)


@T.macro
def pad_copy(x, xp, offset):
    """``xp`` = the NCHW input ``x`` zero-padded by ``offset`` = (top, left) (and whatever ``xp``'s
    shape adds at the bottom/right): zero, then copy the interior, both vectorized, with no
    per-element bounds test."""
    for b in range(xp.shape[0]):
        for c in T.parallel(xp.shape[1]):
            for h in range(xp.shape[2]):
                for w in T.vectorized(xp.shape[3]):
                    xp[b, c, h, w] = T.float32(0)
            for h in range(x.shape[2]):
                for w in T.vectorized(x.shape[3]):
                    xp[b, c, h + offset[0], w + offset[1]] = x[b, c, h, w]


def row_chunks(block_rows: int, tiles: int, min_tasks: int) -> int:
    """Split block rows into chunks so that there are at least ``min_tasks`` parallel tasks (a ``lut``
    chunk rebuilds its tile's table, so no more chunks than needed)."""
    chunks = 1
    while tiles * chunks < min_tasks and chunks < block_rows:
        chunks += 1
        while block_rows % chunks:
            chunks += 1
    return chunks


@T.macro
def _group_rows(chunk, groups, chunks, gi, body):
    """``body(rb, width)`` for the rows of row group ``gi`` that chunk ``chunk`` of ``chunks`` owns
    (every ``chunks``-th, so chunks of sorted rows get equal work)."""
    if gi < len(groups):
        for rr in range(-(-groups[gi].size // chunks)):
            rb: T.let[T.int32] = groups[gi].start + rr * chunks + chunk  # a plain name is a heap-allocated local
            if groups[gi].size % chunks == 0:
                body(rb, groups[gi].width)
            elif rr * chunks + chunk < groups[gi].size:
                body(rb, groups[gi].width)


@T.macro
def each_row(chunk, groups, chunks, body):
    """``body(rb, width)`` for every sorted block row ``rb`` that chunk ``chunk`` owns, one static loop
    nest per row group (``ell.py``; one call per group up to MAX_GROUPS = 4: TVMScript has no loop
    over Python values)."""
    _group_rows(chunk, groups, chunks, 0, body)
    _group_rows(chunk, groups, chunks, 1, body)
    _group_rows(chunk, groups, chunks, 2, body)
    _group_rows(chunk, groups, chunks, 3, body)


def sign_bit(signs: tvm.tirx.Buffer, rb, slot, bit):
    """Sign bit ``bit`` (uint32, 1 = negative) of block ``(rb, slot)``."""
    word_bits = tvm.DataType(signs.dtype).bits
    word = T.Cast("uint32", signs[rb, slot, bit // word_bits])
    return T.bitwise_and(T.shift_right(word, T.uint32(bit % word_bits)), T.uint32(1))


# A float mode's (float dtype, unsigned dtype of its bits): the sign flip works on the bits.
FLOAT_BITS = {"fp32": ("float32", "uint32"), "fp16": ("float16", "uint16")}


def apply_sign(value, bit, mode: str):
    """``-value`` if ``bit`` (a uint32 0/1) else ``value``, without a multiply (fp32/fp16: XOR of the
    float's sign bit; int8: ``(x ^ m) - m`` in int32)."""
    if mode in FLOAT_BITS:
        dtype, bits = FLOAT_BITS[mode]
        width = int(bits[4:])
        flipped = T.bitwise_xor(T.reinterpret(bits, value), T.Cast(bits, T.shift_left(bit, T.uint32(width - 1))))
        return T.reinterpret(dtype, flipped)
    mask = T.int32(0) - T.Cast("int32", bit)
    return T.bitwise_xor(T.Cast("int32", value), mask) - mask


def pack_int8x4(values):
    """Four int8 values as one int32 word, ``values[0]`` in the lowest byte (little-endian: the word's
    bytes in memory are the four int8 in order, as ``sdot`` reads them)."""
    word = T.Cast("int32", T.Cast("uint8", values[0]))
    for j in range(1, 4):
        word = T.bitwise_or(word, T.shift_left(T.Cast("int32", T.Cast("uint8", values[j])), T.int32(8 * j)))
    return word


def quantize(value, inv_scale):
    """``clamp(round(value * inv_scale), -127, 127)`` as int8."""
    return T.Cast("int8", T.max(T.min(T.round(value * inv_scale), T.float32(127)), T.float32(-127)))
