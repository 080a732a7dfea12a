"""TIR generators for unified (block-sparse, sign + shared scale) weights."""

from .ell import EllWeight, LutWeight, to_ell, to_lut
from .free_blocks import FreeEll, free_conv2d, free_dense, to_free_ell
from .unified_gemm import (DEFAULT_LANES, DEFAULT_TASKS, MODES, Conv2dGeometry, kernel_weight, pick_lanes,
                           unified_conv2d, unified_dense)

__all__ = ["Conv2dGeometry", "DEFAULT_LANES", "DEFAULT_TASKS", "EllWeight", "FreeEll", "LutWeight", "MODES",
           "free_conv2d", "free_dense", "kernel_weight", "pick_lanes", "to_ell", "to_free_ell", "to_lut",
           "unified_conv2d", "unified_dense"]
