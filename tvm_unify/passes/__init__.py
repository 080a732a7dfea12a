"""Relax passes of tvm-unify."""

from .fuse_epilogue import FuseUnifiedEpilogue
from .lower_unified_blocks import LowerUnifiedBlocks, layer_names, weight_fingerprint
from .report import LayerReport, report_table

__all__ = ["FuseUnifiedEpilogue", "LayerReport", "LowerUnifiedBlocks", "layer_names", "report_table", "weight_fingerprint"]
