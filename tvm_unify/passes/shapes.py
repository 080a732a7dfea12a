"""Static shapes of Relax expressions: the kernels are generated per shape, so passes need them as ints."""

from __future__ import annotations

import tvm
from tvm import relax

from ..kernels.common import Conv2dGeometry

# (data, kernel, output) layouts of the conv2d calls the kernels take: the importer's own
CONV2D_LAYOUTS = ("NCHW", "OIHW", "NCHW")


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


def conv2d_layouts(attrs) -> tuple[str, str, str]:
    """A conv2d call's (data, kernel, output) layouts; an unset output layout is the data's."""
    return str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout or attrs.data_layout)


def conv2d_geometry(attrs, x_shape: tuple[int, ...], weight_shape: tuple[int, ...]) -> Conv2dGeometry:
    """The geometry of an NCHW/OIHW conv2d call on a static input: Relax's 1, 2 or 4 padding values
    as (top, left, bottom, right)."""
    padding = tuple(int(p) for p in attrs.padding)
    padding = padding * (4 // len(padding)) if len(padding) in (1, 2) else padding
    return Conv2dGeometry(*x_shape, int(weight_shape[0]), (int(weight_shape[2]), int(weight_shape[3])),
                          tuple(int(s) for s in attrs.strides), padding, tuple(int(d) for d in attrs.dilation))
