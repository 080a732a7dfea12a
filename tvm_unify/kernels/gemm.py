"""The frame every block-sparse GEMM kernel shares, and the knobs that choose its algorithm.

A kernel is one PrimFunc ``(x, *weight arrays, *epilogue operands, y)``: a prologue that fixes the int8
activation scale (given, or ``max|x| / 127`` per call), reads the input in place or from a zero-padded
copy, and, for the sign-apply algorithms, stages it tile-major (``[tiles, K, lanes]``, quantized in
int8 mode) so that a task streams through one contiguous block instead of striding across K rows of P
values (page-sized strides defeat the prefetchers: staging ``[K, P]`` made a 64->64 3x3 conv at 32x32
1.6x slower); the int8 dot-product algorithms (``sdot.py``, ``smmla.py``) want four consecutive k per
pixel instead, ``[tiles, K/4, lanes]`` int32 words of four int8 (sdot's operand layout); then the
algorithm's body (``lut.py``, ``direct.py``, ``gemv.py``, ``free_blocks.py``),
which receives a ``GemmPlan``: the problem, the weight's buffers and the derived tiling.

Every loop bound is a compile-time constant (blocked ELL, ``ell.py``), so meta-schedule's
DisallowDynamicLoop accepts the access pattern, and ``KernelOptions`` are the knobs a tuner searches.
We read the block pattern from constant arrays rather than unrolling it into code (SparseRT-style):
one index load per block is amortized over a vector of pixels, and code size stays independent of the
weight count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import tvm
from tvm import tirx
from tvm.script import tirx as T

from .common import GemmProblem, WordGather, lane_reduce, pack_int8x4, pad_copy, pick_lanes, quantize, row_chunks, x_at
from .epilogue import Step, bind_epilogue, with_params
from .ell import MAX_GROUPS

MODES = ("fp32", "int8")
DEFAULT_LANES = 16
DEFAULT_TASKS = 4  # parallel tasks of a lut kernel, i.e. the device's cores (each task builds its tile's table)
ROW_TASKS = 16  # of the direct and gemv kernels (no per-task set-up: finer load balance)
# Algorithms that read X staged, and how many consecutive k each staged element packs per pixel.
STAGING = {"direct": 1, "gemv": 1, "dot4": 4, "sdot": 4, "smmla": 4}


@dataclass(frozen=True)
class KernelOptions:
    """How a unified kernel computes: ``mode`` (fp32, or int8 activations x +-1 weights), the int8
    activation scale (None: computed per call), vector ``lanes``, ``algorithm`` (None: the default for
    the mode and shape, ``unified.default_algorithm``), parallel ``tasks`` of the lut algorithm (the
    device's cores), and the ``epilogue`` applied at each store. ``row_tasks`` (parallel tasks of the
    other algorithms) and ``max_groups`` (row-group loop nests, ``ell.row_groups``) are tuning knobs
    (``tuning/space.py``): their defaults are what an untuned build uses."""

    mode: str = "fp32"
    act_scale: float | None = None
    lanes: int = DEFAULT_LANES
    algorithm: str | None = None
    tasks: int = DEFAULT_TASKS
    epilogue: Sequence[Step] = ()
    row_tasks: int = ROW_TASKS
    max_groups: int = MAX_GROUPS

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}")


@dataclass(frozen=True)
class GemmPlan:
    """A problem, a weight and the options, with what the kernel derives from them: the pixel tile
    (``vl`` lanes, ``tiles`` of them), row ``chunks`` per tile for the parallel tasks, the weight's TIR
    buffers by field name, and ``store``, the macro that writes one output value through the epilogue."""

    problem: GemmProblem
    weight: object
    options: KernelOptions
    buffers: dict[str, tirx.Buffer]
    vl: int
    tiles: int
    chunks: int
    store: Callable = field(repr=False)
    epilogue_params: list[tirx.Buffer] = field(repr=False)
    epilogue_decls: list[tirx.Stmt] = field(repr=False)

    def tile_start(self, t):
        """The first pixel of tile ``t``: ``t * vl``, or, when ``vl`` does not divide an image's pixels
        (``plan_gemm(overlap=True)``), the image's tiles with the last one moved back to end at the
        image's last pixel. It then recomputes a few pixels of its neighbour, storing the same values,
        so every tile is whole vectors: no masked lanes, no scalar tail."""
        group, vl = self.problem.group, self.vl
        if group % vl == 0:
            return t * vl
        per_image = -(-group // vl)
        return t // per_image * group + T.min(t % per_image * vl, group - vl)

    @property
    def staged(self) -> bool:
        """Whether the prologue stages X tile-major: the sign-apply algorithms do, except an fp32 GEMM
        whose input already is X (a 1x1/stride-1 conv, a batch-1 linear); the table lookups and the free
        blocks read the input directly."""
        return self.options.algorithm in STAGING and not (
            self.problem.gather is None and self.options.mode == "fp32")

    @property
    def k_pack(self) -> int:
        """Consecutive k per staged element: 4 (int32 words of four int8) for the dot-product kernels."""
        return STAGING.get(self.options.algorithm, 1)

    @property
    def xdtype(self) -> str:
        if self.options.mode == "fp32":
            return "float32"
        return "int8" if self.k_pack == 1 else "int32"


# An algorithm's body: plan -> T.inline(src, xcol, yv, qscale) computing every output.
Body = Callable[[GemmPlan], Callable]


def plan_gemm(problem: GemmProblem, weight, names: Sequence[str], options: KernelOptions,
              min_tasks: int, overlap: bool = False) -> GemmPlan:
    """The plan for ``weight`` (whose ``arrays`` are named ``names``), with at least ``min_tasks``
    parallel tasks where the block rows allow. ``overlap``: the body places tiles with ``tile_start``,
    so the widest vector that fits an image is used (else the widest that divides it)."""
    vl = problem.overlapping_lanes(options.lanes) if overlap else problem.lanes(options.lanes)
    tiles = problem.p_extent // problem.group * -(-problem.group // vl)
    buffers = {name: tirx.decl_buffer(array.shape, str(array.dtype), name)
               for name, array in zip(names, weight.arrays, strict=True)}
    params, decls, finish = bind_epilogue(options.epilogue, problem.y_shape[1], problem.y_shape, problem.y_view)
    store_index = problem.store_index

    @T.macro
    def store(yv, p0, row, v, value):
        yv[store_index(p0, row, v)] = finish(value, row, store_index(p0, row, v))

    chunks = row_chunks(weight.arrays[0].shape[0], tiles, min_tasks)  # every form's arrays lead with block rows
    return GemmPlan(problem, weight, options, buffers, vl, tiles, chunks, store, params, decls)


def word_stager(words: WordGather, vl: int) -> Callable:
    """``stage(x, xcol, inv)``: X as words (``[tiles, K/4, vl]``) through ``words``' int8 copy of ``x``:
    every input quantized once into the copy (zero borders), then words copied run by run, a run being
    pixels of one output row inside one tile (contiguous stores, no per-lane division)."""
    (n, rows, cols, channels), (top, left) = words.shape, words.offset
    in_rows, in_cols = words.input_hw
    images, out_rows, out_cols = words.pixels
    run = math.gcd(out_cols, vl)

    @T.inline
    def stage(x, xcol, inv):
        copy = T.decl_buffer((n, rows, channels // 4, cols, 4), "int8")
        copy_words = T.decl_buffer((n, rows, channels // 4, cols), "int32", data=copy.data)
        if (rows, cols) != (in_rows, in_cols):
            for i in T.parallel(n * rows):
                for c in range(channels // 4):
                    for j in T.vectorized(cols):
                        copy_words[i // rows, i % rows, c, j] = 0
        for i in T.parallel(n * in_rows):
            for c in range(channels):
                for j in T.vectorized(in_cols):
                    copy[i // in_rows, i % in_rows + top, c // 4, j + left, c % 4] = quantize(
                        words.load(x, i // in_rows, c, i % in_rows, j), inv)
        for kq in T.parallel(xcol.shape[1]):
            for image in range(images):
                for row in range(out_rows):
                    for r in range(out_cols // run):
                        for v in T.vectorized(run):
                            xcol[((image * out_rows + row) * out_cols + r * run) // vl, kq,
                                 ((image * out_rows + row) * out_cols + r * run) % vl + v] = words.word(
                                copy_words, kq, image, row, r * run + v)

    return stage


def gemm_kernel(plan: GemmPlan, body: Body) -> tvm.tirx.PrimFunc:
    """The PrimFunc ``(x, *weight arrays, *epilogue operands, y)``: the shared prologue, then ``body``."""
    problem, options = plan.problem, plan.options
    x_shape, y_shape, k_extent, p_extent = problem.x_shape, problem.y_shape, problem.k_extent, problem.p_extent
    gather, pad = problem.gather, problem.pad
    x_size = problem.x_size
    x_lanes = pick_lanes(x_size, options.lanes)
    dynamic_scale = options.mode == "int8" and options.act_scale is None
    given_scale = float(options.act_scale) if options.mode == "int8" and options.act_scale else 1.0
    vl, tiles, staged, xdtype, k_pack = plan.vl, plan.tiles, plan.staged, plan.xdtype, plan.k_pack
    words = problem.words if k_pack == 4 else None
    stage = word_stager(words, vl) if words is not None else None
    run = body(plan)

    @T.prim_func(check_well_formed=False)  # the weight and epilogue parameters are added after parsing
    def kernel(x: T.Buffer(x_shape, "float32"), y: T.Buffer(y_shape, "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        xflat = T.decl_buffer((x_size,), "float32", data=x.data)
        yv = T.decl_buffer(problem.y_view, "float32", data=y.data)
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
            qscale[0] = T.float32(given_scale)
        if gather is None:
            src = T.decl_buffer((k_extent, p_extent), "float32", data=x.data)
        elif pad is None:
            src = T.decl_buffer(x_shape, "float32", data=x.data)
        else:
            src = T.decl_buffer(pad[0], "float32")
            pad_copy(x, src, pad[1])
        if staged and k_pack == 4 and words is not None:
            xcol = T.decl_buffer((tiles, k_extent // 4, vl), xdtype)
            stage(x, xcol, T.float32(1) / qscale[0])
        elif staged and k_pack == 4:
            xcol = T.decl_buffer((tiles, k_extent // 4, vl), xdtype)
            inv = T.float32(1) / qscale[0]
            for kq in T.parallel(k_extent // 4):
                for t in range(tiles):
                    for v in T.vectorized(vl):
                        xcol[t, kq, v] = pack_int8x4(
                            [quantize(x_at(src, gather, kq * 4 + j, plan.tile_start(t), v), inv)
                             for j in range(4)])
        elif staged:
            xcol = T.decl_buffer((tiles, k_extent, vl), xdtype)
            inv = T.float32(1) / qscale[0]
            for k in T.parallel(k_extent):
                for t in range(tiles):
                    for v in T.vectorized(vl):
                        if xdtype == "float32":
                            xcol[t, k, v] = x_at(src, gather, k, plan.tile_start(t), v)
                        else:
                            xcol[t, k, v] = quantize(x_at(src, gather, k, plan.tile_start(t), v), inv)
        else:
            xcol = src
        run(src, xcol, yv, qscale)

    return with_params(kernel, [*plan.buffers.values(), *plan.epilogue_params], plan.epilogue_decls)
