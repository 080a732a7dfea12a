"""Static shapes of Relax expressions: the kernels are generated per shape, so passes need them as ints."""

from __future__ import annotations

import tvm
from tvm import relax


def static_tensor_shape(expr: relax.Expr, dtype: str = "float32") -> tuple[int, ...] | None:
    """The shape of a ``dtype`` tensor expression whose dimensions are all constants, else None (the
    kernels are generated per shape and dtype)."""
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None or ty.dtype != dtype:
        return None
    dims = []
    for d in ty.shape.values:
        if not isinstance(d, tvm.tirx.IntImm):
            return None
        dims.append(int(d))
    return tuple(dims)
