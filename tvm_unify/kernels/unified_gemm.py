"""TIR kernels for unified weights: conv2d and linear as one block-sparse GEMM, fp32 or int8.

Both ops compute ``Y[O, P] = W[O, K] @ X[K, P]`` with W in blocked ELL (``ell.py``); linear is the GEMM
with P = batch, conv2d an *implicit-im2col GEMM*: ``X[k, p]`` (k = input channel and tap in the weight's
layout, p = output pixel) is gathered from the input, first copied into a zero-padded buffer if the
conv pads so that the gather needs no bounds checks, and vectorized over a tile of pixels that lies in
one output row when it can (contiguous loads at stride 1). We chose im2col over a direct conv because
the GEMM then vectorizes over pixels whatever the stride, padding and dilation. The ``lut`` algorithm
gathers straight into its tables (a tile's inputs stay in cache across the taps); ``direct`` and
``gemv``, which read X at the blocks' columns many times, first stage it in a tile-major buffer
``[tiles, K, lanes]`` (quantized to int8 in int8 mode), so that a task streams through one contiguous
block instead of striding across K rows of P values (page-sized strides defeat the prefetchers:
staging ``[K, P]`` and building the tables from it made a 64->64 3x3 conv at 32x32 1.6x slower). A
1x1/stride-1 conv at batch 1 and a batch-1 linear read their fp32 input in place.

Three GEMM algorithms (``default_algorithm`` picks):

- ``lut`` (fp32, P > 1): per tile of ``lanes`` pixels, a table holds for every group of 4 consecutive
  inputs the 16 signed sums ``+-x0 +-x1 +-x2 +-x3`` (built from two 4-entry halves: 6 vector ops per
  input); a 4-wide block row then costs one lookup and one FMA with the block's scale, instead of 4
  sign flips and 4 adds. The entry each lookup reads (block column and its 4 sign bits) is precomputed
  (``ell.LutWeight``), so a lookup is one scalar load. A task builds its tile's table, so tasks split
  block rows only as far as needed for ``tasks``-way parallelism, ``tasks`` being the device's cores:
  with fewer tasks a core idles, with more a core builds the same table twice (one table shared by all
  tasks was 3x slower on 2 cores, where each core reads the half the other one wrote). 2.5-4x faster
  than ``direct`` on 3x3 convs.
- ``direct`` (fp32 or int8): per block, each weight flips the sign of a vector of inputs (XOR of the sign
  bit in fp32; ``(x ^ m) - m`` in int32 for int8) into a per-block partial sum, then one multiply by the
  block's scale per row. Its int8 x +-1 block dot products are the shape ARM ``sdot``/``i8mm`` tensorize.
- ``gemv`` (P == 1, batch-1 linear): vector lanes over one block's ``rows*cols`` weights, sign bits
  applied lane-wise from the block's sign word, inputs pre-replicated per block column (``xrep``).

Register accumulators carry their vector lanes explicitly (TIR's vectorize-with-local-scalars hazard)
and live in default-scope buffers: TVM 0.27 heap-allocates ``local`` buffers inside a parallel loop
(one TVMBackendAllocWorkspace call each), which also kept LLVM from promoting them to registers.

*Tunable by design*: every loop bound is a compile-time constant (blocked ELL: block rows sorted by
length and cut into row groups, each padded to equal length and run as its own loop nest), so
meta-schedule's DisallowDynamicLoop accepts the access pattern, and each kernel is a template whose
knobs (``lanes``, ``algorithm``, ``tasks``, ROW_TASKS, LUT_BITS) a tuner can search. Every parallel task
owns every ``chunks``-th sorted row of each group, so tasks get equal work. We read the
block pattern from constant arrays rather than unrolling it into code (SparseRT-style): one index load
per block is amortized over a vector of pixels, and code size stays independent of the weight count.

int8: activations are quantized per tensor, ``q = clamp(round(x / act_scale), -127, 127)``, with a given
(calibrated) ``act_scale`` or, when None, ``max|x| / 127`` computed per call; weights are exactly +-1, the
per-block sums accumulate in int32 and are rescaled by ``scale * act_scale``. The quantized im2col
buffer is where the data layout is chosen: it is ``[K, P]`` (pixels contiguous) for vector-over-pixel
hosts; an ARM ``sdot`` schedule wants ``[K/4, P, 4]`` (four consecutive k per pixel), a change confined
to the gather stage.

*Epilogue*: the ops that follow a layer (bias, BatchNorm, residual add, ReLU/ReLU6) can be applied to
each output value in registers at its store (``epilogue``: ``Affine``, ``AddTensor``, ``Clip`` steps), so
the output makes one trip through memory instead of one per op (``passes/fuse_epilogue.py``). Their
operands are extra parameters between the inputs and the output. Every kernel carries a JSON recipe
(``RECIPE_ATTR``) from which ``regenerate`` rebuilds it, with another epilogue, from its call's
constant arguments: the PrimFunc itself cannot be re-parameterized after it is generated.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import tvm
from tvm import tirx
from tvm.script import tirx as T

from .ell import EllWeight, LutWeight, lut_bits, to_lut

MODES = ("fp32", "int8")
ALGORITHMS = ("lut", "direct", "gemv")
DEFAULT_LANES = 16
DEFAULT_TASKS = 4  # parallel tasks of a lut kernel, i.e. the device's cores (each task builds its tile's table)
ROW_TASKS = 16  # of the direct and gemv kernels (no per-task set-up: finer load balance)
RECIPE_ATTR = "tvm_unify.recipe"


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
    def pixels(self) -> int:
        """Output pixels over the batch: the GEMM's column count P."""
        oh, ow = self.out_hw
        return self.batch * oh * ow

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


# An epilogue step's TIR form: (parameters, buffer declarations, value -> value at (row, index)).
BoundStep = tuple[list[tirx.Buffer], list[tirx.Stmt], Callable]


@dataclass(frozen=True, eq=False)
class Affine:
    """``y * scale + shift`` per output channel: bias, BatchNorm, and any chain of those folded into one
    FMA (``fold_epilogue``). None stands for 1 (scale) or 0 (shift), so a plain bias costs one add."""

    scale: np.ndarray | None = None  # (out_channels,), float32 once folded
    shift: np.ndarray | None = None

    def operands(self) -> list[np.ndarray]:
        return [a for a in (self.scale, self.shift) if a is not None]

    def describe(self) -> str:
        return "affine" if self.scale is not None and self.shift is not None else (
            "scale" if self.scale is not None else "shift")

    def bind(self, name: str, channels: int, _y_shape, _y_view) -> BoundStep:
        scale = None if self.scale is None else tirx.decl_buffer((channels,), "float32", f"{name}_scale")
        shift = None if self.shift is None else tirx.decl_buffer((channels,), "float32", f"{name}_shift")

        def apply(value, row, _index):
            value = value if scale is None else value * scale[row]
            return value if shift is None else value + shift[row]

        return [b for b in (scale, shift) if b is not None], [], apply


@dataclass(frozen=True, eq=False)
class AddTensor:
    """``y + t`` with ``t`` an extra input of the output's shape, read at the store's index: a residual
    add, or another kernel's partial sum (the free blocks). ``operand`` is opaque here: what the caller
    passes for it (a Relax expression in ``FuseUnifiedEpilogue``)."""

    operand: object = None

    def operands(self) -> list[object]:
        return [self.operand]

    def describe(self) -> str:
        return "add"

    def bind(self, name: str, _channels: int, y_shape, y_view) -> BoundStep:
        param = tirx.decl_buffer(y_shape, "float32", name)
        view = tirx.decl_buffer(y_view, "float32", f"{name}_view", data=tirx.buffer_data(param))
        return [param], [tirx.DeclBuffer(view, data=tirx.buffer_data(param))], lambda value, _row, index: (
            value + view[index])


@dataclass(frozen=True)
class Clip:
    """``min(max(y, lo), hi)`` (None: unbounded): ReLU is ``Clip(0.0)``, ReLU6 ``Clip(0.0, 6.0)``."""

    lo: float | None = None
    hi: float | None = None

    def operands(self) -> list[object]:
        return []

    def describe(self) -> str:
        return "relu" if (self.lo, self.hi) == (0.0, None) else f"clip({self.lo},{self.hi})"

    def bind(self, _name: str, _channels: int, _y_shape, _y_view) -> BoundStep:
        def apply(value, _row, _index):
            value = value if self.lo is None else T.max(value, T.float32(self.lo))
            return value if self.hi is None else T.min(value, T.float32(self.hi))

        return [], [], apply


Step = Affine | AddTensor | Clip


def fold_epilogue(steps: Sequence[Step]) -> tuple[Step, ...]:
    """Merge consecutive ``Affine`` steps into one, so that e.g. conv bias + BatchNorm's subtract, divide,
    multiply and add cost one FMA per output value. Composed in float64 and rounded to the kernel's
    float32 once, here."""
    folded: list[Step] = []
    for step in steps:
        if isinstance(step, Affine) and folded and isinstance(folded[-1], Affine):
            folded[-1] = _compose(folded[-1], step)
        else:
            folded.append(step)
    return tuple(Affine(*(None if a is None else np.asarray(a, dtype=np.float32) for a in (s.scale, s.shift)))
                 if isinstance(s, Affine) else s for s in folded)


def _compose(first: Affine, then: Affine) -> Affine:
    """``then(first(y))``: scale ``s1 * s2``, shift ``b1 * s2 + b2``."""
    scale = None
    if first.scale is not None or then.scale is not None:
        scale = np.float64(1) if first.scale is None else first.scale.astype(np.float64)
        scale = scale if then.scale is None else scale * then.scale
    shift = None if first.shift is None else first.shift.astype(np.float64)
    if shift is not None and then.scale is not None:
        shift = shift * then.scale
    if then.shift is not None:
        shift = then.shift.astype(np.float64) if shift is None else shift + then.shift
    return Affine(scale, shift)


def _bind_epilogue(steps: Sequence[Step], channels: int, y_shape, y_view) -> BoundStep:
    """All steps' parameters and declarations, in step order, and their composition."""
    bound = [step.bind(f"epilogue{n}", channels, y_shape, y_view) for n, step in enumerate(steps)]

    def apply(value, row, index):
        for _, _, step in bound:
            value = step(value, row, index)
        return value

    return [p for b in bound for p in b[0]], [d for b in bound for d in b[1]], apply


def _with_params(kernel: tvm.tirx.PrimFunc, params: list[tirx.Buffer], decls: list[tirx.Stmt]
                 ) -> tvm.tirx.PrimFunc:
    """Insert the epilogue's parameters before the output (the body already reads them) and declare
    their views first; then check what the parser could not (it saw the parameters as free buffers)."""
    if not params:
        tvm.tirx.analysis.verify_well_formed(kernel)
        return kernel
    body = list(kernel.body.seq) if isinstance(kernel.body, tirx.SeqStmt) else [kernel.body]
    func = tirx.PrimFunc([*kernel.params[:-1], *params, kernel.params[-1]], tirx.SeqStmt([*decls, *body]),
                         kernel.ret_type, kernel.attrs)
    tvm.tirx.analysis.verify_well_formed(func)
    return func


def _sign_bit(signs: tvm.tirx.Buffer, rb, slot, bit):
    """Sign bit ``bit`` (uint32, 1 = negative) of block ``(rb, slot)``."""
    word_bits = tvm.DataType(signs.dtype).bits
    word = T.Cast("uint32", signs[rb, slot, bit // word_bits])
    return T.bitwise_and(T.shift_right(word, T.uint32(bit % word_bits)), T.uint32(1))


def _lookups(lut: tvm.tirx.Buffer, entries: tvm.tirx.Buffer, rb, slot, i: int, v, lookups: int):
    """Block row ``i`` of block ``(rb, slot)`` times the tile's inputs: the sum of its table lookups."""
    total = lut[T.Cast("int32", entries[rb, slot, i * lookups]), v]
    for j in range(1, lookups):
        total = total + lut[T.Cast("int32", entries[rb, slot, i * lookups + j]), v]
    return total


def _weight_buffers(weight: EllWeight | LutWeight) -> dict[str, tvm.tirx.Buffer]:
    """TIR buffers for the weight's arrays, named after its fields, in ``arrays`` order: the kernel body
    reads them, and they become its parameters after x."""
    names = ("entries", "scales", "order") if isinstance(weight, LutWeight) else ("columns", "scales", "signs", "order")
    return {name: tirx.decl_buffer(array.shape, str(array.dtype), name)
            for name, array in zip(names, weight.arrays, strict=True)}


def _x_at(src: tvm.tirx.Buffer, gather: Callable | None, k, p0, v):
    """X[k, p0 + v] of the GEMM's input: ``gather(src, ...)`` from the (padded) input, or, with no
    gather, the input itself viewed ``[K, P]``."""
    return src[k, p0 + v] if gather is None else gather(src, k, p0, v)


def _xcol_at(xcol: tvm.tirx.Buffer, k, t, vl: int, v):
    """X[k, t * vl + v] from the staged GEMM input: tile-major ``[tiles, K, vl]`` (a tile's K x vl
    values contiguous, so a kernel walking K for one tile streams through memory), or the input itself
    viewed ``[K, P]``."""
    return xcol[t, k, v] if len(xcol.shape) == 3 else xcol[k, t * vl + v]


def _signed_sum(src: tvm.tirx.Buffer, gather: Callable | None, k0, p0, v, pattern, count: int):
    """``sum_j (-1)^bit_j(pattern) * X[k0 + j, p0 + v]`` for j < count (a constant pattern after
    unrolling)."""
    total = T.float32(0)
    for j in range(count):
        total = total + T.Cast("float32", 1 - 2 * ((pattern >> j) & 1)) * _x_at(src, gather, k0 + j, p0, v)
    return total


def lane_reduce(buf: tvm.tirx.Buffer, start: int, count: int, combine=lambda a, b: a + b):
    """``combine`` over ``buf[start:start + count]``, unrolled (horizontal reduction of vector lanes)."""
    total = buf[start]
    for j in range(1, count):
        total = combine(total, buf[start + j])
    return total


def _row_chunks(block_rows: int, tiles: int, min_tasks: int) -> int:
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


def conv_gather(g: Conv2dGeometry, layout: str, vl: int) -> Callable:
    """``gather(xp, k, p0, v)`` = X[k, p0 + v] of the conv's im2col view, read from the zero-padded
    input ``xp``: k decodes to (channel, tap) in the weight's layout; a tile of ``vl`` pixels stays in
    one output row when it can (contiguous loads at stride 1)."""
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


def _quantize(value, inv_scale):
    return T.Cast("int8", T.max(T.min(T.round(value * inv_scale), T.float32(127)), T.float32(-127)))


def _make_kernel(
    x_shape: tuple[int, ...],
    y_shape: tuple[int, ...],
    k_extent: int,
    p_extent: int,
    group: int,
    gather: Callable | None,
    pad: tuple[tuple[int, ...], tuple[int, int]] | None,
    store_index: Callable,
    weight: EllWeight | LutWeight,
    mode: str,
    act_scale: float | None,
    lanes: int,
    algorithm: str,
    tasks: int,
    epilogue: Sequence[Step] = (),
) -> tvm.tirx.PrimFunc:
    """The shared GEMM kernel. ``gather(x, k, p0, v)`` is X[k, p0 + v] (None: X is the input itself,
    viewed [K, P]); ``pad = (shape, (top, left))`` first copies the input into a zero-padded buffer
    that ``gather`` then reads without bounds checks; ``store_index(p0, row, v)`` maps an output
    row and pixel to an index of the output viewed ``y_view``; ``epilogue`` is applied to each value at
    its store (output channel = row). The weight's arrays become the parameters after x, in order."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    vl = pick_lanes(group, lanes)
    tiles = p_extent // vl
    br, bc, width = weight.rows, weight.cols, weight.width
    nbr = len(weight.order)
    weight_params = _weight_buffers(weight)
    columns, scales, signs, order, entries = (weight_params.get(name) for name in
                                              ("columns", "scales", "signs", "order", "entries"))
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
    if (algorithm == "lut") != isinstance(weight, LutWeight):
        raise ValueError(f"algorithm {algorithm!r} takes {'a LutWeight' if algorithm == 'lut' else 'an EllWeight'}")
    g = lut_bits(bc)  # sign bits per table lookup
    nent, g_low = 1 << g, min(g, 2)
    nlow = 1 << g_low
    chunks = _row_chunks(nbr, tiles, tasks if algorithm == "lut" else ROW_TASKS)
    groups = weight.groups
    given_inv = 1.0 / act_scale if act_scale else 1.0
    params, decls, finish = _bind_epilogue(epilogue, y_shape[1], y_shape, y_view)
    # The lut tables read the input directly; direct/gemv stage it (quantized for int8) in tile-major
    # im2col, except an fp32 GEMM whose input already is X (a 1x1/stride-1 conv, a batch-1 linear).
    staged = algorithm != "lut" and not (gather is None and mode == "fp32")

    @T.macro
    def store(yv, p0, row, v, value):
        yv[store_index(p0, row, v)] = finish(value, row, store_index(p0, row, v))

    @T.prim_func(check_well_formed=False)  # the epilogue's parameters are added after parsing
    def kernel(x: T.Buffer(x_shape, "float32"), y: T.Buffer(y_shape, "float32")):
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
            qscale[0] = lane_reduce(amax, 0, x_lanes, T.max) / T.float32(127)
        else:
            qscale[0] = T.float32(1.0 / given_inv)
        if gather is None:
            src = T.decl_buffer((k_extent, p_extent), "float32", data=x.data)
        elif pad is None:
            src = T.decl_buffer(x_shape, "float32", data=x.data)
        else:
            src = T.decl_buffer(pad[0], "float32")
            pad_copy(x, src, pad[1])
        if staged:
            xcol = T.decl_buffer((tiles, k_extent, vl), xdtype)
            inv = T.float32(1) / qscale[0]
            for k in T.parallel(k_extent):
                for t in range(tiles):
                    for v in T.vectorized(vl):
                        if mode == "fp32":
                            xcol[t, k, v] = _x_at(src, gather, k, t * vl, v)
                        else:
                            xcol[t, k, v] = _quantize(_x_at(src, gather, k, t * vl, v), inv)
        else:
            xcol = src
        if algorithm == "gemv":
            xrep = T.decl_buffer((k_extent // bc, br * bc), xdtype)
            for c in T.parallel(k_extent // bc):
                for e in T.vectorized(br * bc):
                    xrep[c, e] = _xcol_at(xcol, c * bc + e % bc, 0, 1, 0)
            for task in T.parallel(chunks):
                @T.inline
                def gemv_row(rb, slots):
                    acc = T.decl_buffer((br * bc,), "float32")
                    for e in T.vectorized(br * bc):
                        acc[e] = T.float32(0)
                    for slot in range(slots):
                        for e in T.vectorized(br * bc):
                            acc[e] = acc[e] + scales[rb, slot] * T.Cast("float32", _apply_sign(
                                xrep[columns[rb, slot], e],
                                _sign_bit(signs, rb, slot, e), mode))
                    for i in T.unroll(br):
                        store(yv, 0, order[rb] * br + i, 0, lane_reduce(acc, i * bc, bc) * qscale[0])

                each_row(task, groups, chunks, gemv_row)
        elif algorithm == "lut":
            @T.inline
            def fill_table(lut, r, p0):
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

            for task in T.parallel(tiles * chunks):
                lut = T.decl_buffer((k_extent // g * nent, vl), "float32")
                for r in range(k_extent // g):
                    fill_table(lut, r, task // chunks * vl)

                @T.inline
                def lut_row(rb, slots):
                    acc = T.decl_buffer((br, vl), "float32")
                    zero(acc, br, vl)
                    for slot in range(slots):
                        for i in T.unroll(br):
                            for v in T.vectorized(vl):
                                acc[i, v] = acc[i, v] + scales[rb, slot] * _lookups(
                                    lut, entries, rb, slot, i, v, bc // g)
                    for i in T.unroll(br):
                        for v in T.vectorized(vl):
                            store(yv, task // chunks * vl, order[rb] * br + i, v, acc[i, v])

                each_row(task % chunks, groups, chunks, lut_row)
        else:
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
                                    part[i, v] = part[i, v] + _apply_sign(
                                        _xcol_at(xcol, columns[rb, slot] * bc + j, task // chunks, vl, v),
                                        _sign_bit(signs, rb, slot, i * bc + j), mode)
                        for i in T.unroll(br):
                            for v in T.vectorized(vl):
                                acc[i, v] = acc[i, v] + T.Cast("float32", part[i, v]) * scales[rb, slot]
                    for i in T.unroll(br):
                        for v in T.vectorized(vl):
                            store(yv, task // chunks * vl, order[rb] * br + i, v, acc[i, v] * qscale[0])

                each_row(task % chunks, groups, chunks, direct_row)

    return _with_params(kernel, [*weight_params.values(), *params], decls)


def tap_decoder(layout: str, channels: int, kh: int, kw: int) -> Callable:
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


def kernel_weight(ell: EllWeight, mode: str, columns: int, algorithm: str | None = None) -> EllWeight | LutWeight:
    """The weight in the form ``algorithm`` (default: ``default_algorithm``) reads: ``LutWeight`` for
    ``lut``, else ``ell`` itself. Its ``arrays`` are the kernel's constant arguments."""
    return to_lut(ell) if (algorithm or default_algorithm(mode, columns)) == "lut" else ell


def _resolve_algorithm(weight: EllWeight | LutWeight, columns: int, algorithm: str | None) -> str:
    """The algorithm a weight's form implies when none is given: ``lut`` for a ``LutWeight``, else the
    sign-apply kernel for the column count."""
    if algorithm is not None:
        return algorithm
    return "lut" if isinstance(weight, LutWeight) else ("gemv" if columns == 1 else "direct")


def _with_recipe(kernel: tvm.tirx.PrimFunc, shape: dict, weight: EllWeight | LutWeight, mode: str,
                 act_scale: float | None, lanes: int, algorithm: str, tasks: int,
                 epilogue: Sequence[Step]) -> tvm.tirx.PrimFunc:
    """Attach what ``regenerate`` needs besides the call's arguments (``shape``: op and its dimensions;
    ``ell_args``: the call arguments that hold the weight's arrays)."""
    recipe = {**shape, "mode": mode, "act_scale": None if act_scale is None else float(act_scale),
              "lanes": lanes, "algorithm": algorithm, "tasks": tasks, "block": [weight.rows, weight.cols],
              "ell_args": list(range(1, 1 + len(weight.arrays))), "epilogue": [step.describe() for step in epilogue]}
    return kernel.with_attr(RECIPE_ATTR, json.dumps(recipe))


def recipe_of(func: tvm.ir.BaseFunc) -> dict | None:
    """The recipe of a unified kernel (None for any other function)."""
    text = func.attrs.get(RECIPE_ATTR) if isinstance(func, tvm.tirx.PrimFunc) and func.attrs else None
    return None if text is None else json.loads(str(text))


def regenerate(recipe: dict, weight_arrays: Sequence[np.ndarray], epilogue: Sequence[Step]) -> tvm.tirx.PrimFunc:
    """The kernel ``recipe`` describes, on the weight arrays of its call (arguments ``recipe["ell_args"]``),
    with ``epilogue`` instead of the recipe's own."""
    form = LutWeight if recipe["algorithm"] == "lut" else EllWeight
    weight = form(*recipe["block"], *weight_arrays)
    options = {"mode": recipe["mode"], "act_scale": recipe["act_scale"], "lanes": recipe["lanes"],
               "algorithm": recipe["algorithm"], "tasks": recipe["tasks"], "epilogue": epilogue}
    if recipe["op"] == "conv2d":
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in recipe["geometry"].items()}
        return unified_conv2d(Conv2dGeometry(**fields), weight, recipe["layout"], **options)
    return unified_dense(*recipe["dims"], weight, **options)


def unified_conv2d(g: Conv2dGeometry, weight: EllWeight | LutWeight, layout: str, mode: str = "fp32",
                   act_scale: float | None = None, lanes: int = DEFAULT_LANES, algorithm: str | None = None,
                   tasks: int = DEFAULT_TASKS, epilogue: Sequence[Step] = ()) -> tvm.tirx.PrimFunc:
    """conv2d (NCHW x OIHW-unified, groups=1) -> PrimFunc(x, *weight.arrays, *epilogue operands, y)."""
    (kh, kw) = g.kernel
    pt, pl, pb, pr = g.padding
    oh, ow = g.out_hw
    q = oh * ow
    pad_shape = (g.batch, g.in_channels, g.height + pt + pb, g.width + pl + pr)

    def store_index(p0, row, v):
        return (p0 // q, row, p0 % q + v)

    algorithm = _resolve_algorithm(weight, g.pixels, algorithm)
    kernel = _make_kernel(
        (g.batch, g.in_channels, g.height, g.width), (g.batch, g.out_channels, oh, ow),
        g.in_channels * kh * kw, g.pixels, q,
        gather=None if g.reads_input_in_place else conv_gather(g, layout, pick_lanes(q, lanes)),
        pad=None if g.padding == (0, 0, 0, 0) else (pad_shape, (pt, pl)), store_index=store_index,
        weight=weight, mode=mode, act_scale=act_scale, lanes=lanes, algorithm=algorithm, tasks=tasks,
        epilogue=epilogue)
    shape = {"op": "conv2d", "geometry": asdict(g), "layout": layout}
    return _with_recipe(kernel, shape, weight, mode, act_scale, lanes, algorithm, tasks, epilogue)


def unified_dense(batch: int, in_features: int, out_features: int, weight: EllWeight | LutWeight,
                  mode: str = "fp32", act_scale: float | None = None, lanes: int = DEFAULT_LANES,
                  algorithm: str | None = None, tasks: int = DEFAULT_TASKS,
                  epilogue: Sequence[Step] = ()) -> tvm.tirx.PrimFunc:
    """``x @ W.T`` (x: [batch, in], W unified [out, in]) -> PrimFunc(x, *weight.arrays, *epilogue operands,
    y)."""

    def gather(x, k, p0, v):
        return x[p0 + v, k]

    def store_index(p0, row, v):
        return (p0 + v, row)

    algorithm = _resolve_algorithm(weight, batch, algorithm)
    kernel = _make_kernel((batch, in_features), (batch, out_features), in_features, batch, batch,
                          gather=None if batch == 1 else gather, pad=None, store_index=store_index, weight=weight,
                          mode=mode, act_scale=act_scale, lanes=lanes, algorithm=algorithm, tasks=tasks,
                          epilogue=epilogue)
    shape = {"op": "linear", "dims": [batch, in_features, out_features]}
    return _with_recipe(kernel, shape, weight, mode, act_scale, lanes, algorithm, tasks, epilogue)


__all__ = ["ALGORITHMS", "AddTensor", "Affine", "Clip", "Conv2dGeometry", "DEFAULT_LANES", "DEFAULT_TASKS", "MODES",
           "RECIPE_ATTR",
           "Step", "default_algorithm", "fold_epilogue", "kernel_weight", "pick_lanes", "recipe_of", "regenerate",
           "unified_conv2d", "unified_dense"]
