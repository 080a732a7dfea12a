"""Unified conv2d and linear kernels: pick the algorithm, plan the GEMM, generate, attach the recipe.

The algorithms (``default_algorithm`` picks from the mode, the shape and the target's features):
``lut`` (table lookups, fp32), ``direct`` (sign-apply, fp32 or int8), ``gemv`` (a batch-1 linear), and
on aarch64 the int8 block-row dot products (``sdot.py``: ``sdot`` with dotprod, ``dot4`` without;
``smmla.py`` with i8mm). int8: activations are quantized per tensor,
``q = clamp(round(x / act_scale), -127, 127)``, with a given (calibrated) ``act_scale`` or, when None,
``max|x| / 127`` computed per call; weights are exactly +-1, the per-block sums accumulate in int32 and
are rescaled by ``scale * act_scale`` (the dot-product kernels put a block row's scales on one int8
grid first, ``sdot.DotWeight``). The staged input buffer is where the data layout is chosen: tile-major
with pixels innermost for the sign-apply kernels, four consecutive k per pixel for the dot products.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from typing import Sequence

import numpy as np
import tvm

from .common import Conv2dGeometry, GemmProblem, conv2d_problem, dense_problem
from .planar import OP as PLANAR, regenerate_planar
from .direct import direct_body
from .ell import EllWeight, LutWeight, to_lut
from .epilogue import Step
from .gemm import KernelOptions, gemm_kernel, plan_gemm
from .gemv import gemv_body
from .lut import lut_body
from .neon import CpuFeatures, dot_lanes, row_lanes
from .recipe import conv2d_shape, dense_shape, geometry_of, options_of, with_recipe
from .sdot import DotWeight, dot4_body, sdot_body, to_dot
from .smmla import PairWeight, smmla_body, to_pairs

ALGORITHMS = {"lut": lut_body, "direct": direct_body, "gemv": gemv_body, "dot4": dot4_body, "sdot": sdot_body,
              "smmla": smmla_body}
# The weight form each algorithm reads (the rest read ``EllWeight``), how to make it, its arrays' names.
FORMS = {"lut": (LutWeight, to_lut), "dot4": (DotWeight, to_dot), "sdot": (DotWeight, to_dot),
         "smmla": (PairWeight, to_pairs)}
FIELDS = {LutWeight: ("entries", "scales", "order"), EllWeight: ("columns", "scales", "signs", "order"),
          DotWeight: ("columns", "words", "row_scales", "order"), PairWeight: ("columns", "words", "row_scales", "order")}
KernelWeight = EllWeight | LutWeight | DotWeight | PairWeight
DOT_ALGORITHMS = ("dot4", "sdot", "smmla")  # int8 only, blocks a multiple of 4 wide, tiles of 4k pixels


def default_algorithm(mode: str, columns: int, features: CpuFeatures = CpuFeatures(),
                      block: tuple[int, int] = (4, 4), group: int | None = None) -> str:
    """One column (batch-1 linear): ``gemv``, vector lanes over a block's weights. Else fp32: table
    lookups (fewest vector ops on any CPU). int8 on aarch64, for blocks a multiple of 4 wide and
    ``group`` (pixels per image, default ``columns``) a multiple of 4: block-row dot products, with
    ``smmla`` where the target has i8mm (blocks of even height), ``sdot`` where it has dotprod, else
    the widening NEON form; elsewhere the sign-apply loop."""
    if columns == 1:
        return "gemv"
    if mode == "fp32":
        return "lut"
    if features.aarch64 and block[1] % 4 == 0 and (group or columns) % 4 == 0:
        if features.i8mm and block[0] % 2 == 0:
            return "smmla"
        return "sdot" if features.dotprod else "dot4"
    return "direct"


def target_options(options: KernelOptions, features: CpuFeatures, block: tuple[int, int], columns: int,
                   group: int | None = None, row: int | None = None) -> KernelOptions:
    """``options`` with the default algorithm for the target's ``features`` (``default_algorithm``) and,
    on aarch64, a pixel tile for NEON (``options.lanes`` caps it): the dot products' accumulators fit
    the registers (``neon.dot_lanes``), the fp32 tiles of a conv that gathers output rows ``row``
    pixels wide stay in one row (``neon.row_lanes``). Other targets keep ``options.lanes``."""
    algorithm = options.algorithm or default_algorithm(options.mode, columns, features, block, group)
    lanes = options.lanes
    if algorithm in DOT_ALGORITHMS:
        lanes = dot_lanes(block[0], lanes)
    elif features.aarch64:
        lanes = row_lanes(row, lanes)
    return replace(options, algorithm=algorithm, lanes=lanes)


DEFERRED_ATTR = "tvm_unify.deferred"


def kernel_weight(ell: EllWeight, mode: str, columns: int, algorithm: str | None = None
                  ) -> KernelWeight:
    """The weight in the form ``algorithm`` (default: ``default_algorithm``) reads (``FORMS``; ``ell``
    itself for the sign-apply kernels). Its ``arrays`` are the kernel's constant arguments."""
    form = FORMS.get(algorithm or default_algorithm(mode, columns))
    return ell if form is None else form[1](ell)


def _resolve(weight: KernelWeight, problem: GemmProblem, options: KernelOptions) -> KernelOptions:
    """``options`` with the algorithm the weight's form implies when none is given (``lut`` for a
    ``LutWeight``, ``dot4`` for a ``DotWeight``, ``smmla`` for a ``PairWeight``, else the sign-apply kernel for the column count), checked
    against mode, shape and form."""
    implied = {LutWeight: "lut", DotWeight: "dot4", PairWeight: "smmla"}.get(type(weight), "gemv" if problem.p_extent == 1 else "direct")
    algorithm = options.algorithm or implied
    if (algorithm not in ALGORITHMS or (algorithm == "lut" and options.mode != "fp32")
            or (algorithm == "gemv" and problem.p_extent != 1)
            or (algorithm in DOT_ALGORITHMS and (options.mode != "int8" or problem.lanes(options.lanes) % 4))):
        raise ValueError(f"algorithm {algorithm!r} does not exist for mode {options.mode} and "
                         f"{problem.p_extent} columns")
    form = FORMS.get(algorithm, (EllWeight,))[0]
    if type(weight) is not form:  # exact: a PairWeight is a DotWeight with another layout
        raise ValueError(f"algorithm {algorithm!r} takes a {form.__name__}, not a {type(weight).__name__}")
    return replace(options, algorithm=algorithm)


def tiles_overlap(algorithm: str) -> bool:
    """Whether ``algorithm``'s pixel tiles may overlap (``GemmPlan.tile_start``): all but the int8 dot
    products, which stage words by pixel (``gemm.word_stager``)."""
    return algorithm not in DOT_ALGORITHMS


def _unified(problem: GemmProblem, weight: KernelWeight, options: KernelOptions,
             shape: dict) -> tvm.tirx.PrimFunc:
    options = _resolve(weight, problem, options)
    min_tasks = options.tasks if options.algorithm == "lut" else options.row_tasks
    weight = weight.with_max_groups(options.max_groups)
    plan = plan_gemm(problem, weight, FIELDS[type(weight)], options, min_tasks,
                     overlap=tiles_overlap(options.algorithm))
    kernel = gemm_kernel(plan, ALGORITHMS[options.algorithm])
    return with_recipe(kernel, shape, (weight.rows, weight.cols), len(weight.arrays), options)


def _signature(problem: GemmProblem, weight: KernelWeight, options: KernelOptions, shape: dict,
               x_shape: tuple[int, ...], y_shape: tuple[int, ...]) -> tvm.tirx.PrimFunc:
    """What ``_unified`` returns without the kernel's body: its parameters ``(x, *weight.arrays, y)``,
    its recipe and ``DEFERRED_ATTR``."""
    options = _resolve(weight, problem, options)
    params = [tvm.tirx.decl_buffer(x_shape, "float32", "x"),
              *(tvm.tirx.decl_buffer(a.shape, str(a.dtype), f"w{i}") for i, a in enumerate(weight.arrays)),
              tvm.tirx.decl_buffer(y_shape, "float32", "y")]
    func = tvm.tirx.PrimFunc(params, tvm.tirx.Evaluate(tvm.tirx.const(0, "int32"))).with_attr(DEFERRED_ATTR, True)
    return with_recipe(func, shape, (weight.rows, weight.cols), len(weight.arrays), options)


def is_deferred(func: tvm.ir.BaseFunc) -> bool:
    """Whether ``func`` is a unified kernel's signature whose body is yet to be generated."""
    return isinstance(func, tvm.tirx.PrimFunc) and func.attrs is not None and DEFERRED_ATTR in func.attrs


def unified_conv2d(g: Conv2dGeometry, weight: KernelWeight, layout: str,
                   options: KernelOptions = KernelOptions()) -> tvm.tirx.PrimFunc:
    """conv2d (NCHW x OIHW-unified, groups=1) -> PrimFunc(x, *weight.arrays, *epilogue operands, y)."""
    return _unified(conv2d_problem(g, layout, options.lanes), weight, options, conv2d_shape(g, layout))


def unified_dense(batch: int, in_features: int, out_features: int, weight: KernelWeight,
                  options: KernelOptions = KernelOptions()) -> tvm.tirx.PrimFunc:
    """``x @ W.T`` (x: [batch, in], W unified [out, in]) -> PrimFunc(x, *weight.arrays, *epilogue operands,
    y)."""
    return _unified(dense_problem(batch, in_features, out_features), weight, options,
                    dense_shape(batch, in_features, out_features))


@dataclass(frozen=True)
class UnifiedLayer:
    """A unified conv2d/linear as its kernel sees it: the layer ``name``, ``op``, the conv geometry or a
    linear's (batch, in, out) ``dims``, the weight ``layout``, the blocked-ELL weight and the ``options``
    an untuned build uses. What a tuner varies the options of, and what its records are keyed by."""

    name: str
    op: str
    dims: Conv2dGeometry | tuple[int, int, int]
    layout: str
    ell: EllWeight
    options: KernelOptions

    @property
    def columns(self) -> int:
        """The GEMM's column count P (pixels over the batch, or a linear's batch)."""
        return self.dims.pixels if self.op == "conv2d" else self.dims[0]

    @cached_property
    def shape(self) -> list:
        """What the workload is without its block pattern: op, shapes, block, mode."""
        dims = asdict(self.dims) if self.op == "conv2d" else list(self.dims)
        return [self.op, dims, self.layout, [self.ell.rows, self.ell.cols], self.options.mode,
                self.options.act_scale is None]

    @property
    def shape_key(self) -> str:
        """The workload without its block pattern (another model's layer of the same shapes)."""
        return _digest(self.shape)

    @cached_property
    def key(self) -> str:
        """The workload: ``shape`` and a hash of the block pattern (which blocks exist, not their
        values), so equal layers of different models share a record and a retrained model whose pattern
        moved does not reuse a stale one."""
        pattern = hashlib.sha256()
        for array in (self.ell.order, np.where(self.ell.scales != 0, self.ell.columns, -1)):
            pattern.update(np.ascontiguousarray(array, dtype=np.int32).tobytes())
        return _digest([*self.shape, pattern.hexdigest()])

    def _gemm(self, options: KernelOptions) -> tuple[GemmProblem, dict, tuple[int, ...], tuple[int, ...]]:
        """The GEMM the kernel computes with ``options``' lanes, the op's shape for the recipe, and the
        kernel's input and output shapes."""
        if self.op == "conv2d":
            g = self.dims
            return (conv2d_problem(g, self.layout, options.lanes), conv2d_shape(g, self.layout),
                    g.input_shape, (g.batch, g.out_channels, *g.out_hw))
        batch, in_features, out_features = self.dims
        return dense_problem(*self.dims), dense_shape(*self.dims), (batch, in_features), (batch, out_features)

    def kernel(self, options: KernelOptions) -> tuple[tvm.tirx.PrimFunc, KernelWeight]:
        """The kernel with ``options`` (an algorithm must be set), and the weight form it reads."""
        weight = kernel_weight(self.ell, options.mode, self.columns, options.algorithm)
        problem, shape, _, _ = self._gemm(options)
        return _unified(problem, weight, options, shape), weight

    def signature(self, options: KernelOptions) -> tuple[tvm.tirx.PrimFunc, KernelWeight]:
        """``kernel(options)`` without its body (``is_deferred``): parameters and recipe, from which the
        epilogue fusion, or ``GenerateDeferredKernels`` for a kernel it leaves alone, generates it once.
        Generating it here too would parse every fused kernel twice."""
        weight = kernel_weight(self.ell, options.mode, self.columns, options.algorithm)
        problem, shape, x_shape, y_shape = self._gemm(options)
        return _signature(problem, weight, options, shape, x_shape, y_shape), weight


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def regenerate(recipe: dict, weight_arrays: Sequence[np.ndarray], epilogue: Sequence[Step]) -> tvm.tirx.PrimFunc:
    """The kernel ``recipe`` describes, on the weight arrays of its call (arguments ``recipe["ell_args"]``),
    with ``epilogue`` instead of the recipe's own (a dense planar conv's recipe, ``planar.py``, too: the
    epilogue fusion treats both alike)."""
    if recipe["op"] == PLANAR:
        return regenerate_planar(recipe, epilogue)
    form = FORMS.get(recipe["algorithm"], (EllWeight,))[0]
    weight = form(*recipe["block"], *weight_arrays)
    options = options_of(recipe, epilogue)
    if recipe["op"] == "conv2d":
        return unified_conv2d(geometry_of(recipe), weight, recipe["layout"], options)
    return unified_dense(*recipe["dims"], weight, options)
