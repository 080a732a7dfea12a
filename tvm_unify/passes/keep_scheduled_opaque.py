"""``KeepScheduledOpaque``: mark already-scheduled PrimFuncs opaque so fusion cannot merge them.

FuseTIR would otherwise splice a hand-scheduled kernel and its epilogue into a new function without
``tirx.is_scheduled``, and the default rules would then schedule its blocks again. The epilogues of
unified kernels are fused by ``FuseUnifiedEpilogue`` instead.
"""

from __future__ import annotations

import tvm
from tvm.ir.transform import PassContext, module_pass

from ..schedule.apply import is_scheduled

# relax.transform.AnnotateTIROpPattern's kOpaque: FuseOps never fuses such a function with others.
OPAQUE_PATTERN = 8


@module_pass(opt_level=0, name="KeepScheduledOpaque")
class KeepScheduledOpaque:
    """Give every scheduled PrimFunc without an ``op_pattern`` the opaque pattern."""

    def transform_module(self, mod: tvm.IRModule, _ctx: PassContext) -> tvm.IRModule:
        for gvar, func in list(mod.functions_items()):
            if is_scheduled(func) and "op_pattern" not in func.attrs:
                mod[gvar] = func.with_attr("op_pattern", OPAQUE_PATTERN)
        return mod
