"""Unified conv2d and linear kernels: pick the algorithm, plan the GEMM, generate, attach the recipe.

Three algorithms (``default_algorithm`` picks): ``lut`` (table lookups, fp32), ``direct`` (sign-apply,
fp32 or int8) and ``gemv`` (a batch-1 linear). int8: activations are quantized per tensor,
``q = clamp(round(x / act_scale), -127, 127)``, with a given (calibrated) ``act_scale`` or, when None,
``max|x| / 127`` computed per call; weights are exactly +-1, the per-block sums accumulate in int32 and
are rescaled by ``scale * act_scale``. The staged input buffer is where the data layout is chosen: it is
tile-major with pixels innermost for vector-over-pixel hosts; an ARM ``sdot`` schedule wants four
consecutive k per pixel, a change confined to the staging.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np
import tvm

from .common import Conv2dGeometry, GemmProblem, conv2d_problem, dense_problem
from .direct import direct_body
from .ell import EllWeight, LutWeight, to_lut
from .epilogue import Step
from .gemm import ROW_TASKS, KernelOptions, gemm_kernel, plan_gemm
from .gemv import gemv_body
from .lut import lut_body
from .recipe import conv2d_shape, dense_shape, geometry_of, options_of, with_recipe

ALGORITHMS = {"lut": lut_body, "direct": direct_body, "gemv": gemv_body}
FIELDS = {LutWeight: ("entries", "scales", "order"), EllWeight: ("columns", "scales", "signs", "order")}


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


def _resolve(weight: EllWeight | LutWeight, problem: GemmProblem, options: KernelOptions) -> KernelOptions:
    """``options`` with the algorithm the weight's form implies when none is given (``lut`` for a
    ``LutWeight``, else the sign-apply kernel for the column count), checked against mode and shape."""
    algorithm = options.algorithm or (
        "lut" if isinstance(weight, LutWeight) else ("gemv" if problem.p_extent == 1 else "direct"))
    if (algorithm not in ALGORITHMS or (algorithm == "lut" and options.mode != "fp32")
            or (algorithm == "gemv" and problem.p_extent != 1)):
        raise ValueError(f"algorithm {algorithm!r} does not exist for mode {options.mode} and "
                         f"{problem.p_extent} columns")
    if (algorithm == "lut") != isinstance(weight, LutWeight):
        raise ValueError(f"algorithm {algorithm!r} takes {'a LutWeight' if algorithm == 'lut' else 'an EllWeight'}")
    return replace(options, algorithm=algorithm)


def _unified(problem: GemmProblem, weight: EllWeight | LutWeight, options: KernelOptions,
             shape: dict) -> tvm.tirx.PrimFunc:
    options = _resolve(weight, problem, options)
    min_tasks = options.tasks if options.algorithm == "lut" else ROW_TASKS
    plan = plan_gemm(problem, weight, FIELDS[type(weight)], options, min_tasks)
    kernel = gemm_kernel(plan, ALGORITHMS[options.algorithm])
    return with_recipe(kernel, shape, (weight.rows, weight.cols), len(weight.arrays), options)


def unified_conv2d(g: Conv2dGeometry, weight: EllWeight | LutWeight, layout: str,
                   options: KernelOptions = KernelOptions()) -> tvm.tirx.PrimFunc:
    """conv2d (NCHW x OIHW-unified, groups=1) -> PrimFunc(x, *weight.arrays, *epilogue operands, y)."""
    return _unified(conv2d_problem(g, layout, options.lanes), weight, options, conv2d_shape(g, layout))


def unified_dense(batch: int, in_features: int, out_features: int, weight: EllWeight | LutWeight,
                  options: KernelOptions = KernelOptions()) -> tvm.tirx.PrimFunc:
    """``x @ W.T`` (x: [batch, in], W unified [out, in]) -> PrimFunc(x, *weight.arrays, *epilogue operands,
    y)."""
    return _unified(dense_problem(batch, in_features, out_features), weight, options,
                    dense_shape(batch, in_features, out_features))


def regenerate(recipe: dict, weight_arrays: Sequence[np.ndarray], epilogue: Sequence[Step]) -> tvm.tirx.PrimFunc:
    """The kernel ``recipe`` describes, on the weight arrays of its call (arguments ``recipe["ell_args"]``),
    with ``epilogue`` instead of the recipe's own."""
    form = LutWeight if recipe["algorithm"] == "lut" else EllWeight
    weight = form(*recipe["block"], *weight_arrays)
    options = options_of(recipe, epilogue)
    if recipe["op"] == "conv2d":
        return unified_conv2d(geometry_of(recipe), weight, recipe["layout"], options)
    return unified_dense(*recipe["dims"], weight, options)
