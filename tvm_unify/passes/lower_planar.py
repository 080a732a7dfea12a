"""``LowerPlanarConv2d``: replace dense depthwise convs and convs with very few input channels (the RGB
stem) by the hand-scheduled CPU kernel of ``kernels/planar.py``.

The shape of TVM's ``FoldBatchnormToConv2D``: one pattern (``nn.conv2d(x, W)`` with ``W`` constant), a
check, a rewrite to ``R.call_tir(kernel, [x, W as [out_channels, in_channels / groups * kh * kw]])``.
Checked: float32 NCHW input of static shape, OIHW weight, and a geometry ``planar.supports`` (depthwise,
or groups=1 with at most four input channels; no dilation; output rows wide enough to vectorize); any
other conv stays a Relax op for the default rules. Layers of one geometry share a kernel (the weights
are call arguments). The pass runs for LLVM CPU targets only (the current target), before the layout
conversion, and the epilogue fusion then folds BatchNorm and ReLU6 into the kernel's store as it does
for unified kernels (``fuse_epilogue.py``). ``choose`` may change each kernel's knobs (tuning records,
``tuning/apply.py``) or collect the workloads (the tuner).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tvm
from tvm import relax
from tvm.ir.transform import PassContext, module_pass
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

from ..kernels.common import Conv2dGeometry
from ..kernels.planar import PlanarConv, supports
from ..schedule.common import is_cpu, vector_lanes
from .shapes import CONV2D_LAYOUTS, conv2d_geometry, conv2d_layouts, static_tensor_shape


def planar_geometry(call: relax.Call, x: relax.Expr, weight: np.ndarray) -> Conv2dGeometry | None:
    """The geometry of a conv2d call if the planar kernel computes it, else None."""
    attrs = call.attrs
    x_shape = static_tensor_shape(x)
    if (x_shape is None or len(x_shape) != 4 or conv2d_layouts(attrs) != CONV2D_LAYOUTS
            or str(attrs.out_dtype) not in ("", "void", "float32") or weight.dtype != np.float32):
        return None
    g = conv2d_geometry(attrs, x_shape, weight.shape)
    return g if supports(g, int(attrs.groups)) else None


@module_pass(opt_level=0, name="LowerPlanarConv2d")
class LowerPlanarConv2d:
    """Lower planar conv2d layers with constant weights to ``kernels/planar.py`` kernels (CPU targets; on
    any other target, or with none current, the module is returned unchanged), with the knobs ``choose``
    returns for the untuned ``PlanarConv`` (None: the untuned ones). After the pass has run, ``lowered``
    counts the rewritten calls."""

    def __init__(self, choose: Callable[[PlanarConv], PlanarConv] | None = None) -> None:
        self.choose = choose
        self.x = wildcard()
        self.weight = is_const()
        self.conv2d = is_op("relax.nn.conv2d")(self.x, self.weight)
        self.lowered = 0

    def transform_module(self, mod: tvm.IRModule, _ctx: PassContext) -> tvm.IRModule:
        self.lowered = 0
        target = tvm.target.Target.current(allow_none=True)
        if target is None or not is_cpu(target):
            return mod
        lanes = vector_lanes(target)
        builder = relax.BlockBuilder(mod)
        kernels: dict[PlanarConv, tvm.ir.GlobalVar] = {}

        def rewriter(expr: relax.Expr, matches) -> relax.Expr:
            weight = matches[self.weight].value.numpy()
            g = planar_geometry(matches[self.conv2d], matches[self.x], weight)
            if g is None:
                return expr
            conv = PlanarConv.untuned(g, int(matches[self.conv2d].attrs.groups), lanes)
            conv = conv if self.choose is None else self.choose(conv)
            if conv not in kernels:
                kernels[conv] = builder.add_func(conv.kernel().without_attr("global_symbol"), "planar_conv2d")
            self.lowered += 1
            taps = relax.const(np.ascontiguousarray(weight.reshape(g.out_channels, -1)))
            return relax.call_tir(kernels[conv], [matches[self.x], taps], expr.ty)

        for gvar, func in mod.functions.items():
            if isinstance(func, relax.Function) and not func.attrs.get("Primitive", False):
                builder.update_func(gvar, rewrite_call(self.conv2d, rewriter, func))
        return builder.get() if self.lowered else mod
