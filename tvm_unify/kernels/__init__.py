"""TIR generators for unified (block-sparse, sign + shared scale) weights."""

from .ell import EllWeight, to_ell
from .free_blocks import FreeEll, free_conv2d, free_dense, to_free_ell
from .unified_gemm import DEFAULT_LANES, MODES, Conv2dGeometry, pick_lanes, unified_conv2d, unified_dense

__all__ = ["Conv2dGeometry", "DEFAULT_LANES", "EllWeight", "FreeEll", "MODES", "free_conv2d", "free_dense",
           "pick_lanes", "to_ell", "to_free_ell", "unified_conv2d", "unified_dense"]
