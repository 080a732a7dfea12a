"""Fold the constant weight preparation in NumPy instead of compiling it.

Converting conv kernels to HWIO and decomposing batch norm leave chains of cheap ops on constants
(``permute_dims`` of every weight, ``sqrt(var + eps)``, ``expand_dims`` of every BN vector).
``relax.transform.FoldConstant`` evaluates each of them by legalizing and compiling it with LLVM:
~20 s for MobileNetV2 on 2 cores, most of the build. Evaluating them in NumPy takes milliseconds.
Ops outside the table below are left to FoldConstant.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tvm
from tvm import relax
from tvm.ir.transform import PassContext, module_pass


def _permute(call: relax.Call, x: np.ndarray) -> np.ndarray:
    axes = call.attrs.axes
    return np.transpose(x, None if axes is None else [int(a) for a in axes])


def _reshape(call: relax.Call, x: np.ndarray, *_shape: object) -> np.ndarray:
    return x.reshape([int(d) for d in call.ty.shape])


# op name -> NumPy evaluation from (call, argument arrays); results are cast to the call's dtype.
NUMPY_OPS: dict[str, Callable[..., np.ndarray]] = {
    "relax.permute_dims": _permute,
    "relax.expand_dims": _reshape,
    "relax.reshape": _reshape,
    "relax.squeeze": _reshape,
    "relax.add": lambda _, a, b: a + b,
    "relax.subtract": lambda _, a, b: a - b,
    "relax.multiply": lambda _, a, b: a * b,
    "relax.divide": lambda _, a, b: a / b,
    "relax.sqrt": lambda _, a: np.sqrt(a),
    "relax.rsqrt": lambda _, a: 1 / np.sqrt(a),
}


@relax.expr_functor.mutator
class _NumpyFolder(relax.PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        fold = NUMPY_OPS.get(getattr(call.op, "name", ""))
        if fold is None:
            return call
        values = [self._constant(arg) for arg in call.args]
        if any(v is None for v in values if not isinstance(v, relax.ShapeExpr)):
            return call
        arrays = [v if isinstance(v, relax.ShapeExpr) else v.value.numpy() for v in values]
        return relax.const(np.asarray(fold(call, *arrays)).astype(str(call.ty.dtype)))

    def _constant(self, arg: relax.Expr) -> tvm.ir.GenericConst | relax.ShapeExpr | None:
        if isinstance(arg, relax.Var):
            arg = self.lookup_binding(arg)
        return arg if isinstance(arg, (tvm.ir.GenericConst, relax.ShapeExpr)) else None


@module_pass(opt_level=0, name="FoldConstantsNumpy")
class FoldConstantsNumpy:
    """Evaluate the ops of ``NUMPY_OPS`` whose arguments are all constants (see the module doc)."""

    def transform_module(self, mod: tvm.IRModule, _ctx: PassContext) -> tvm.IRModule:
        folder = _NumpyFolder(mod)
        for gvar, func in list(mod.functions_items()):
            if isinstance(func, relax.Function):
                folder.builder_.update_func(gvar, folder.visit_expr(func))
        return relax.transform.DeadCodeElimination()(folder.builder_.get())
