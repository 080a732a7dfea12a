"""TIR generators for unified (block-sparse, sign + shared scale) weights."""

from .ell import EllWeight, to_ell
from .unified_gemm import DEFAULT_LANES, MODES, Conv2dGeometry, pick_lanes, unified_conv2d, unified_dense

__all__ = ["Conv2dGeometry", "DEFAULT_LANES", "EllWeight", "MODES", "pick_lanes", "to_ell", "unified_conv2d",
           "unified_dense"]
