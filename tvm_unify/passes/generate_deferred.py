"""``GenerateDeferredKernels``: generate the unified kernels ``LowerUnifiedBlocks(defer=True)`` left as
signatures and no epilogue claimed.

The lowering cannot know a kernel's epilogue (BatchNorm is decomposed and folded later), and the
epilogue fusion regenerates every kernel it fuses (``FuseUnifiedEpilogue``), so a compile that
generated each kernel at lowering time parsed most of them twice; TVMScript parsing is most of a
unified compile's time. Deferred, each kernel is generated once: by the fusion with its epilogue, or
here, after it, as it is.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.ir.transform import PassContext, module_pass

from ..kernels import regenerate
from ..kernels.recipe import recipe_of
from ..kernels.unified import is_deferred
from .fuse_epilogue import CALL_TIR


@module_pass(opt_level=0, name="GenerateDeferredKernels")
class GenerateDeferredKernels:
    """Replace every called deferred kernel by the kernel its recipe and its call's constant weight
    arrays describe (no epilogue)."""

    def transform_module(self, mod: tvm.IRModule, _ctx: PassContext) -> tvm.IRModule:
        deferred = {gvar for gvar, func in mod.functions_items() if is_deferred(func)}
        if not deferred:
            return mod
        calls: dict[tvm.ir.GlobalVar, relax.Call] = {}

        def visit(expr: relax.Expr) -> None:
            if isinstance(expr, relax.Call) and expr.op == CALL_TIR and expr.args[0] in deferred:
                calls.setdefault(expr.args[0], expr)

        for func in mod.functions.values():
            if isinstance(func, relax.Function):
                relax.analysis.post_order_visit(func, visit)
        builder = relax.BlockBuilder(mod)
        for gvar, call in calls.items():
            recipe, args = recipe_of(mod[gvar]), call.args[1].fields
            kernel = regenerate(recipe, [args[i].value.numpy() for i in recipe["ell_args"]], ())
            builder.update_func(gvar, kernel.without_attr("global_symbol"))
        return builder.get()
