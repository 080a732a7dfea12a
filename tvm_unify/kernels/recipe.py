"""The JSON recipe every unified kernel carries: what ``unified.regenerate`` needs, besides its call's
constant arguments, to rebuild it (e.g. with another epilogue: a PrimFunc cannot be re-parameterized
after it is generated, so ``FuseUnifiedEpilogue`` regenerates it instead)."""

from __future__ import annotations

import json
from dataclasses import asdict

import tvm

from .common import Conv2dGeometry
from .gemm import KernelOptions

RECIPE_ATTR = "tvm_unify.recipe"


def with_recipe(kernel: tvm.tirx.PrimFunc, shape: dict, block: tuple[int, int], arrays: int,
                options: KernelOptions) -> tvm.tirx.PrimFunc:
    """Attach the recipe: ``shape`` (op and its dimensions), the block shape, the options, and
    ``ell_args``, the call arguments (after x) that hold the weight's ``arrays`` arrays."""
    recipe = {**shape, "mode": options.mode,
              "act_scale": None if options.act_scale is None else float(options.act_scale),
              "lanes": options.lanes, "algorithm": options.algorithm, "tasks": options.tasks, "block": list(block),
              "ell_args": list(range(1, 1 + arrays)), "epilogue": [step.describe() for step in options.epilogue],
              "row_tasks": options.row_tasks, "max_groups": options.max_groups}
    return kernel.with_attr(RECIPE_ATTR, json.dumps(recipe))


def conv2d_shape(g: Conv2dGeometry, layout: str) -> dict:
    return {"op": "conv2d", "geometry": asdict(g), "layout": layout}


def dense_shape(batch: int, in_features: int, out_features: int) -> dict:
    return {"op": "linear", "dims": [batch, in_features, out_features]}


def recipe_of(func: tvm.ir.BaseFunc) -> dict | None:
    """The recipe of a unified kernel (None for any other function)."""
    text = func.attrs.get(RECIPE_ATTR) if isinstance(func, tvm.tirx.PrimFunc) and func.attrs else None
    return None if text is None else json.loads(str(text))


def options_of(recipe: dict, epilogue) -> KernelOptions:
    """The kernel options a recipe records, with ``epilogue`` instead of its own."""
    return KernelOptions(recipe["mode"], recipe["act_scale"], recipe["lanes"], recipe["algorithm"], recipe["tasks"],
                         tuple(epilogue), recipe["row_tasks"], recipe["max_groups"])


def geometry_of(recipe: dict) -> Conv2dGeometry:
    """The conv geometry a conv2d recipe records (JSON lists back to tuples)."""
    return Conv2dGeometry(**{k: tuple(v) if isinstance(v, list) else v for k, v in recipe["geometry"].items()})
