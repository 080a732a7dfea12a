"""TIR generators for unified (block-sparse, sign + shared scale) weights and their free blocks.

``common`` (the op as a GEMM, gather, padding, lanes, sign helpers), ``epilogue`` (ops fused at the
store), ``ell`` (the kernel-side weight forms), ``gemm`` (the shared kernel frame and its options),
one module per algorithm (``lut``, ``direct``, ``gemv``, ``free_blocks``; ``sdot`` and ``smmla`` for
aarch64 int8, chosen from the target's features in ``neon``), ``unified`` (the entry points) and
``recipe`` (what a kernel is regenerated from).
"""

from . import script_speed
from .common import Conv2dGeometry, pick_lanes
from .ell import EllWeight, LutWeight, to_ell, to_lut
from .epilogue import AddTensor, Affine, Clip, Step, fold_epilogue
from .free_blocks import FreeEll, free_conv2d, free_dense, to_free_ell
from .gemm import DEFAULT_LANES, DEFAULT_TASKS, MODES, KernelOptions
from .recipe import RECIPE_ATTR, recipe_of
from .neon import CpuFeatures, cpu_features
from .sdot import DotWeight, to_dot
from .unified import (ALGORITHMS, default_algorithm, kernel_weight, regenerate, target_options, unified_conv2d,
                      unified_dense)

script_speed.install()

__all__ = ["ALGORITHMS", "AddTensor", "Affine", "Clip", "Conv2dGeometry", "CpuFeatures", "DEFAULT_LANES",
           "DEFAULT_TASKS", "DotWeight", "EllWeight", "FreeEll", "KernelOptions", "LutWeight", "MODES", "RECIPE_ATTR",
           "Step", "cpu_features", "default_algorithm", "fold_epilogue", "free_conv2d", "free_dense", "kernel_weight",
           "pick_lanes", "recipe_of", "regenerate", "target_options", "to_dot", "to_ell", "to_free_ell", "to_lut",
           "unified_conv2d", "unified_dense"]
