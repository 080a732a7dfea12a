"""OpenCL kernels for unified layers and their free blocks (mobile GPUs: Mali, Adreno; PoCL here).

The same GEMM as the CPU kernels, ``Y[O, P] = W[O, K] @ X[K, P]`` (``common.GemmProblem``), mapped onto
work-groups instead of parallel tasks:

- a work-group owns a tile of ``TP`` pixels (``blockIdx.x``, one work-item per pixel along
  ``threadIdx.x``) and ``TR`` consecutive sorted block rows (``blockIdx.y``, one work-item per block row
  along ``threadIdx.y``); each work-item computes its block row's ``rows`` outputs at its pixel;
- the work-group first stages the tile's inputs ``X[:, tile]`` in local (shared) memory, gathered
  straight from the input (im2col on the fly; padding becomes a bounds test, since one kernel launch
  has no scratch buffer to copy a padded input into), adjacent work-items reading adjacent pixels. Every
  block row of the work-group then reads its columns from there: the inputs make one trip from global
  memory per work-group instead of one per block row;
- a unified block costs one load of its column, scale and sign word; the sign bits are decoded in
  registers and applied by flipping the float's sign bit, and its block row is scaled with one multiply
  per block (``direct.py``'s arithmetic);
- sorted rows fall into row groups of static widths (``ell.py``): a work-item branches on its row's
  group, so every loop bound stays a compile-time constant and only the group's padding costs work.

``TP`` is the largest power of two up to ``PIXEL_TILE`` that divides the pixels per image and whose
tile fits the target's local memory; when not even one pixel's ``K`` inputs fit, the work-items read
their inputs from global memory instead. ``TR`` fills the work-group (the target's ``max_num_threads``):
each work-group reads its input tile once and the weight entries of its rows once, so the input traffic
falls with ``TR`` and the weight traffic with ``TP``; a unified block's entry (column, scale, sign word:
10 bytes for 4x4) is 6.4x smaller than its dense values, so tall work-groups pay
(``benchmarks/gpu.md`` counts both). Kernels are thread-bound TIR marked ``tirx.is_scheduled``:
no schedule rule touches them, and their epilogue (``epilogue.py``) is applied at the store, so
``FuseUnifiedEpilogue`` regenerates them from their recipe (``regenerate_gpu``) like the CPU kernels.

Precision (``GpuPrecision``): fp32 by default; ``fp16`` stores activations, block scales and free-block
values as half (half the bytes of every input, tile and output; Mali/Adreno load and store half natively)
and sums in fp32 registers; ``fp16-acc`` also sums in half (the ALUs' fast path on Mali and Adreno, at
about 3 significant digits per partial sum). Both need ``cl_khr_fp16`` on the device: TVM's OpenCL code
declares ``half`` variables, which OpenCL without that extension allows only through vload/vstore_half.
The sign flip is the XOR of bit 15 of the half (``common.apply_sign``).

Not int8: the int8 kernels' gain is the CPU's int8 dot-product instructions, which the OpenCL path
does not use, so ``LowerUnifiedBlocks`` refuses int8 for OpenCL targets rather than silently building
fp32 kernels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

import tvm
from tvm import tirx
from tvm.script import tirx as T

from .common import Conv2dGeometry, GemmProblem, apply_sign, conv2d_problem, dense_problem
from .ell import EllWeight, RowGroup
from .epilogue import Step, with_params
from .free_blocks import FreeEll
from .gemm import GemmPlan, KernelOptions, plan_gemm
from .recipe import RECIPE_ATTR, conv2d_shape, dense_shape, geometry_of, options_of, with_recipe

GPU_ALGORITHM = "gpu"  # the recipe's algorithm for the kernels made here
PIXEL_TILE = 16  # pixels per work-group at most (a Mali warp; a quarter of an Adreno wave)


@dataclass(frozen=True)
class GpuPrecision:
    """How a GPU kernel stores and sums: ``storage`` is the dtype of its input and output activations,
    block scales and free-block values, ``accumulate`` the dtype of its sums."""

    name: str
    storage: str
    accumulate: str

    @property
    def sign_mode(self) -> str:
        """``common.apply_sign``'s mode for the stored inputs."""
        return "fp16" if self.storage == "float16" else "fp32"

    @property
    def itemsize(self) -> int:
        return np.dtype(self.storage).itemsize

    def to_acc(self, value):
        """``value`` (a stored element) in the accumulation dtype; no cast where they agree."""
        return value if self.storage == self.accumulate else T.Cast(self.accumulate, value)

    def to_storage(self, value):
        """A sum in the storage dtype, for the output store."""
        return value if self.storage == self.accumulate else T.Cast(self.storage, value)


PRECISIONS = {p.name: p for p in (GpuPrecision("fp32", "float32", "float32"),
                                   GpuPrecision("fp16", "float16", "float32"),
                                   GpuPrecision("fp16-acc", "float16", "float16"))}
FP32 = PRECISIONS["fp32"]


def gpu_weight(weight: EllWeight | FreeEll, precision: GpuPrecision) -> EllWeight | FreeEll:
    """``weight`` with its float arrays (scales, or free values) in the precision's storage dtype: what a
    kernel of that precision takes as constants."""
    if isinstance(weight, FreeEll):
        return replace(weight, values=weight.values.astype(precision.storage))
    return replace(weight, scales=weight.scales.astype(precision.storage))


@dataclass(frozen=True)
class GpuLimits:
    """What the kernels read from an OpenCL target: work-items per work-group and local memory bytes."""

    threads: int
    local_bytes: int

    @classmethod
    def of(cls, target: tvm.target.Target) -> "GpuLimits":
        return cls(int(target.attrs["max_num_threads"]), int(target.attrs["max_shared_memory_per_block"]))


def is_gpu_target(target: tvm.target.Target | None) -> bool:
    """True for the targets whose unified layers get these kernels (OpenCL)."""
    return target is not None and target.kind.name == "opencl"


@dataclass(frozen=True)
class Launch:
    """A kernel's work-group shape: ``pixels`` x ``rows`` work-items, and whether the input tile is
    staged in local memory."""

    pixels: int
    rows: int
    staged: bool


def plan_launch(problem: GemmProblem, block_rows: int, limits: GpuLimits, itemsize: int = 4) -> Launch:
    """The pixel tile (it never spans two images), the block rows per work-group, and local staging of
    ``itemsize``-byte inputs (2 for half: twice the inputs fit)."""
    pixels = problem.lanes(PIXEL_TILE)
    while pixels > 1 and problem.k_extent * pixels * itemsize > limits.local_bytes:
        pixels //= 2
    rows = max(1, limits.threads // pixels)  # a full work-group: every block row more saves a re-read of the tile
    rows = min(rows, 1 << max(block_rows - 1, 0).bit_length())  # no idle work-items in a small layer
    return Launch(pixels, rows, problem.k_extent * pixels * itemsize <= limits.local_bytes)


class _ZeroPadded:
    """The NCHW input seen through zero padding: ``[b, c, h, w]`` of the padded input, 0 outside ``x``."""

    def __init__(self, x: tirx.Buffer, offset: tuple[int, int]) -> None:
        self.x, self.offset = x, offset

    def __getitem__(self, index):
        b, c, h, w = index
        h, w = h - self.offset[0], w - self.offset[1]
        inside = tirx.all(h >= 0, h < self.x.shape[2], w >= 0, w < self.x.shape[3])
        return T.if_then_else(inside, self.x[b, c, h, w], tirx.const(0, self.x.dtype))


def input_reader(problem: GemmProblem) -> Callable:
    """``read(x, k, p0, v)`` = X[k, p0 + v] from the kernel's input ``x`` (the problem must gather)."""
    gather, pad = problem.gather, problem.pad

    def read(x, k, p0, v):
        return gather(x if pad is None else _ZeroPadded(x, pad[1]), k, p0, v)

    return read


@T.macro
def _if_in_group(rb, groups, gi, row, xs, p0, tx, yv):
    """``row(xs, rb, width, p0, tx, yv)`` if sorted row ``rb`` is in row group ``gi``, with that group's
    static width."""
    if gi < len(groups):
        if groups[gi].start <= rb and rb < groups[gi].start + groups[gi].size:
            row(xs, rb, groups[gi].width, p0, tx, yv)


@T.macro
def _by_group(rb, groups, row, xs, p0, tx, yv):
    """``row`` on sorted row ``rb`` with its group's width: one branch per row group (up to MAX_GROUPS = 4,
    as ``common.each_row``), each keeping its static loop bound; rows past the last do nothing."""
    _if_in_group(rb, groups, 0, row, xs, p0, tx, yv)
    _if_in_group(rb, groups, 1, row, xs, p0, tx, yv)
    _if_in_group(rb, groups, 2, row, xs, p0, tx, yv)
    _if_in_group(rb, groups, 3, row, xs, p0, tx, yv)


# A row body: (plan, read, precision) -> T.inline(xs, rb, slots, p0, tx, yv) computing and storing one
# block row at one pixel.
RowBody = Callable[[GemmPlan, Callable, GpuPrecision], Callable]


def gpu_kernel(plan: GemmPlan, launch: Launch, groups: tuple[RowGroup, ...], body: RowBody,
               precision: GpuPrecision = FP32) -> tvm.tirx.PrimFunc:
    """The PrimFunc ``(x, *weight arrays, *epilogue operands, y)``, x and y in the precision's storage
    dtype: per work-group, stage the pixel tile's inputs in local memory (when they fit), then each
    work-item runs ``body`` on its block row."""
    problem, dtype = plan.problem, precision.storage
    x_shape, y_shape, k_extent = problem.x_shape, problem.y_shape, problem.k_extent
    tp, tr, staged = launch.pixels, launch.rows, launch.staged
    tiles, row_blocks = problem.p_extent // tp, -(-plan.weight.columns.shape[0] // tr)
    read = input_reader(problem)
    row = body(plan, (lambda xs, k, _p0, tx: xs[k, tx]) if staged else read, precision)

    @T.prim_func(check_well_formed=False)  # the weight and epilogue parameters are added after parsing
    def kernel(x: T.Buffer(x_shape, dtype), y: T.Buffer(y_shape, dtype)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        yv = T.decl_buffer(problem.y_view, dtype, data=y.data)
        for t in T.thread_binding(tiles, thread="blockIdx.x"):
            for by in T.thread_binding(row_blocks, thread="blockIdx.y"):
                for ty in T.thread_binding(tr, thread="threadIdx.y"):
                    for tx in T.thread_binding(tp, thread="threadIdx.x"):
                        rb: T.let[T.int32] = by * tr + ty
                        if staged:
                            tile = T.decl_buffer((k_extent, tp), dtype, scope="shared")
                            for kk in range(-(-k_extent // tr)):
                                if k_extent % tr == 0:
                                    tile[kk * tr + ty, tx] = read(x, kk * tr + ty, t * tp, tx)
                                elif kk * tr + ty < k_extent:
                                    tile[kk * tr + ty, tx] = read(x, kk * tr + ty, t * tp, tx)
                            T.tvm_storage_sync("shared")
                            _by_group(rb, groups, row, tile, t * tp, tx, yv)
                        else:
                            _by_group(rb, groups, row, x, t * tp, tx, yv)

    return with_params(kernel, [*plan.buffers.values(), *plan.epilogue_params], plan.epilogue_decls)


def _sign(word: tirx.Buffer, bit: int, word_bits: int):
    """Sign bit ``bit`` (uint32, 1 = negative) of a block's sign words held in registers."""
    return T.bitwise_and(T.shift_right(word[bit // word_bits], T.uint32(bit % word_bits)), T.uint32(1))


def block_row(plan: GemmPlan, read: Callable, accumulate: Callable, out_row: Callable,
              precision: GpuPrecision) -> Callable:
    """One block row ``rb`` at one pixel: per slot, its block's ``cols`` inputs into registers ``xr``, then
    ``accumulate(acc, xr, rb, slot)`` adds the block to the row's ``rows`` sums (accumulation dtype),
    stored (storage dtype) at output rows ``out_row(rb) * rows + i``."""
    columns, store, br, bc = plan.buffers["columns"], plan.store, plan.weight.rows, plan.weight.cols
    acc_dtype, x_dtype = precision.accumulate, precision.storage

    @T.inline
    def row(xs, rb, slots, p0, tx, yv):
        acc = T.decl_buffer((br,), acc_dtype, scope="local")
        xr = T.decl_buffer((bc,), x_dtype, scope="local")
        for i in T.unroll(br):
            acc[i] = tirx.const(0, acc_dtype)
        for slot in range(slots):
            for j in T.unroll(bc):
                xr[j] = read(xs, columns[rb, slot] * bc + j, p0, tx)
            accumulate(acc, xr, rb, slot)
        for i in T.unroll(br):
            store(yv, p0, out_row(rb) * br + i, tx, precision.to_storage(acc[i]))

    return row


def unified_row(plan: GemmPlan, read: Callable, precision: GpuPrecision = FP32) -> Callable:
    """A sorted block row of an ``EllWeight``: per block, its sign words into registers, the sign-flipped
    inputs added, the block's partial sums scaled with one multiply each."""
    weight = plan.weight
    scales, signs, order = (plan.buffers[name] for name in ("scales", "signs", "order"))
    br, bc, words, word_bits = weight.rows, weight.cols, weight.signs.shape[2], weight.word_bits
    acc_dtype, mode, to_acc = precision.accumulate, precision.sign_mode, precision.to_acc

    @T.inline
    def accumulate(acc, xr, rb, slot):
        part = T.decl_buffer((br,), acc_dtype, scope="local")
        word = T.decl_buffer((words,), "uint32", scope="local")
        for w in T.unroll(words):
            word[w] = T.Cast("uint32", signs[rb, slot, w])
        for i in T.unroll(br):
            part[i] = tirx.const(0, acc_dtype)
        for j in T.unroll(bc):
            for i in T.unroll(br):
                part[i] = part[i] + to_acc(apply_sign(xr[j], _sign(word, i * bc + j, word_bits), mode))
        for i in T.unroll(br):
            acc[i] = acc[i] + part[i] * to_acc(scales[rb, slot])

    return block_row(plan, read, accumulate, lambda rb: order[rb], precision)


def free_row(plan: GemmPlan, read: Callable, precision: GpuPrecision = FP32) -> Callable:
    """A block row of a ``FreeEll`` (dense-valued blocks, rows in weight order): multiply-adds."""
    values, br, bc, to_acc = plan.buffers["values"], plan.weight.rows, plan.weight.cols, precision.to_acc

    @T.inline
    def accumulate(acc, xr, rb, slot):
        for j in T.unroll(bc):
            for i in T.unroll(br):
                acc[i] = acc[i] + to_acc(values[rb, slot, i, j]) * to_acc(xr[j])

    return block_row(plan, read, accumulate, lambda rb: rb, precision)


def _unified(problem: GemmProblem, weight: EllWeight, options: KernelOptions, limits: GpuLimits,
             shape: dict, precision: GpuPrecision) -> tvm.tirx.PrimFunc:
    if options.mode != "fp32":
        raise ValueError(f"GPU kernels compute in floats only (got mode {options.mode})")
    if precision is not FP32 and options.epilogue:
        raise ValueError("GPU kernels fuse epilogues in fp32 only")  # FuseUnifiedEpilogue skips the others
    weight = gpu_weight(weight, precision)
    launch = plan_launch(problem, weight.columns.shape[0], limits, precision.itemsize)
    options = replace(options, algorithm=GPU_ALGORITHM, lanes=launch.pixels)
    plan = plan_gemm(problem, weight, ("columns", "scales", "signs", "order"), options, 1)
    kernel = with_recipe(gpu_kernel(plan, launch, weight.groups, unified_row, precision), shape,
                         (weight.rows, weight.cols), len(weight.arrays), options)
    recipe = {**json.loads(str(kernel.attrs[RECIPE_ATTR])), "gpu": [limits.threads, limits.local_bytes],
              "gpu_precision": precision.name}
    return kernel.with_attr(RECIPE_ATTR, json.dumps(recipe))


def gpu_conv2d(g: Conv2dGeometry, weight: EllWeight, layout: str, options: KernelOptions,
               limits: GpuLimits, precision: GpuPrecision = FP32) -> tvm.tirx.PrimFunc:
    """conv2d (NCHW x OIHW-unified, groups=1) -> OpenCL-ready PrimFunc(x, *weight.arrays, *epilogue, y),
    the scales taken in the precision's storage dtype (``gpu_weight``)."""
    return _unified(conv2d_problem(g, layout, PIXEL_TILE, in_place=False), weight, options, limits,
                    conv2d_shape(g, layout), precision)


def gpu_dense(batch: int, in_features: int, out_features: int, weight: EllWeight, options: KernelOptions,
              limits: GpuLimits, precision: GpuPrecision = FP32) -> tvm.tirx.PrimFunc:
    """``x @ W.T`` (x: [batch, in], W unified [out, in]) -> OpenCL-ready PrimFunc(x, *weight.arrays, *epilogue, y)."""
    return _unified(dense_problem(batch, in_features, out_features, in_place=False), weight, options, limits,
                    dense_shape(batch, in_features, out_features), precision)


def is_gpu_recipe(recipe: dict) -> bool:
    """Whether a kernel recipe (``recipe.recipe_of``) describes a kernel made here."""
    return recipe["algorithm"] == GPU_ALGORITHM


def regenerate_gpu(recipe: dict, weight_arrays, epilogue: tuple[Step, ...]) -> tvm.tirx.PrimFunc:
    """The GPU kernel ``recipe`` describes, on its call's weight arrays, with ``epilogue``."""
    weight = EllWeight(*recipe["block"], *weight_arrays)
    options, limits = options_of(recipe, epilogue), GpuLimits(*recipe["gpu"])
    precision = PRECISIONS[recipe.get("gpu_precision", "fp32")]
    if recipe["op"] == "conv2d":
        return gpu_conv2d(geometry_of(recipe), weight, recipe["layout"], options, limits, precision)
    return gpu_dense(*recipe["dims"], weight, options, limits, precision)


def _free(problem: GemmProblem, ell: FreeEll, limits: GpuLimits, precision: GpuPrecision) -> tvm.tirx.PrimFunc:
    nbr, ell = ell.columns.shape[0], gpu_weight(ell, precision)
    launch = plan_launch(problem, nbr, limits, precision.itemsize)
    plan = plan_gemm(problem, ell, ("columns", "values"), KernelOptions(lanes=launch.pixels), 1)
    return gpu_kernel(plan, launch, (RowGroup(0, nbr, ell.width),), free_row, precision)


def gpu_free_conv2d(g: Conv2dGeometry, ell: FreeEll, layout: str, limits: GpuLimits,
                    precision: GpuPrecision = FP32) -> tvm.tirx.PrimFunc:
    """conv2d with the free blocks of an NCHW/OIHW weight -> OpenCL-ready PrimFunc(x, columns, values, y)."""
    return _free(conv2d_problem(g, layout, PIXEL_TILE, in_place=False), ell, limits, precision)


def gpu_free_dense(batch: int, in_features: int, out_features: int, ell: FreeEll,
                   limits: GpuLimits, precision: GpuPrecision = FP32) -> tvm.tirx.PrimFunc:
    """``x @ Wfree.T`` -> OpenCL-ready PrimFunc(x, columns, values, y)."""
    return _free(dense_problem(batch, in_features, out_features, in_place=False), ell, limits, precision)


__all__ = ["FP32", "GPU_ALGORITHM", "GpuLimits", "GpuPrecision", "PRECISIONS", "gpu_conv2d", "gpu_dense",
           "gpu_free_conv2d", "gpu_free_dense", "gpu_weight", "is_gpu_recipe", "is_gpu_target", "regenerate_gpu"]
