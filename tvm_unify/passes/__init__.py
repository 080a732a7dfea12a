"""Relax passes of tvm-unify: lowering unified layers and dense planar (depthwise, stem) convs, fusing their epilogues, folding constants,
keeping hand-scheduled kernels out of fusion."""

from .fold_constants import FoldConstantsNumpy
from .fuse_epilogue import FuseUnifiedEpilogue
from .generate_deferred import GenerateDeferredKernels
from .keep_scheduled_opaque import KeepScheduledOpaque
from .lower_planar import LowerPlanarConv2d
from .lower_unified_blocks import LowerUnifiedBlocks
from .report import LayerReport, report_table

__all__ = ["FoldConstantsNumpy", "FuseUnifiedEpilogue", "GenerateDeferredKernels", "KeepScheduledOpaque",
           "LayerReport", "LowerPlanarConv2d", "LowerUnifiedBlocks", "report_table"]
