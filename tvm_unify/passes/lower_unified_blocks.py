"""``LowerUnifiedBlocks``: replace conv2d / linear layers whose constant weights are unified by calls to
block-sparse TIR kernels that take the compressed weight as constants.

Pattern, verify, rewrite (the shape of TVM's ``FoldBatchnormToConv2D``):

- patterns: ``nn.conv2d(x, W)`` and ``matmul(x, permute_dims(W))`` (how the torch importer writes a
  Linear) with ``W`` constant;
- verify: every block of W is checked numerically (``format.analyze``) against the file's spec when
  there is one (never trusted: a wrong block shape or sparsity claim fails), else against the candidate
  block shapes; a layer that fails stays dense, and the report says why;
- rewrite: ``R.call_tir(kernel, [x, *weight arrays])`` (``kernels/ell.py``) with the kernel specialized to the
  layer's shapes and block pattern; a weight whose spec allows free (dense) blocks and has some gets
  ``R.add(that call, R.call_tir(free_kernel, [x, columns, values]))`` (``kernels/free_blocks.py``).
  Bias, BatchNorm and activations around it stay Relax ops, which the default pipeline legalizes and
  fuses.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

from ..format import Analysis, BlockSpec, UnifiedWeight, analyze, weight_fingerprint
from ..kernels import (DEFAULT_LANES, DEFAULT_TASKS, MODES, Conv2dGeometry, EllWeight, FreeEll, LutWeight, free_conv2d,
                       free_dense, KernelOptions, kernel_weight, to_ell, to_free_ell, unified_conv2d, unified_dense)
from .report import LayerReport
from .shapes import static_tensor_shape


# What a kernel generator needs besides the weight: the conv geometry, or a linear's (batch, in, out).
Dims = Conv2dGeometry | tuple[int, int, int]


def _ints(values) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


@tvm.transform.module_pass(opt_level=0, name="LowerUnifiedBlocks")
class LowerUnifiedBlocks:
    """Lower unified conv2d/linear layers to block-sparse kernels (``mode`` fp32 or int8).

    ``layer_names`` maps ``weight_fingerprint`` -> module path (for the report and the spec lookup),
    ``specs`` maps module path -> ``BlockSpec`` (from the TorchScript metadata), ``act_scales`` maps module
    path -> int8 activation scale (absent: computed per call from max |x|), ``tasks`` is the parallel
    task count of the table-lookup kernels (the target device's cores). After the pass has run,
    ``report`` lists every conv2d/linear layer it saw.
    """

    def __init__(self, mode: str = "fp32", specs: Mapping[str, BlockSpec] | None = None,
                 layer_names: Mapping[str, str] | None = None, act_scales: Mapping[str, float] | None = None,
                 lanes: int = DEFAULT_LANES, tasks: int = DEFAULT_TASKS) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r} (choose from {', '.join(MODES)})")
        self.mode = mode
        self.specs = dict(specs or {})
        self.layer_names = dict(layer_names or {})
        self.act_scales = dict(act_scales or {})
        self.lanes = lanes
        self.tasks = tasks
        self.report: list[LayerReport] = []
        self._kept_dense: set[tuple[str, tuple[int, ...] | None]] = set()
        self.x = wildcard()
        self.weight = is_const()
        self.conv2d = is_op("relax.nn.conv2d")(self.x, self.weight)
        self.transposed = is_op("relax.permute_dims")(self.weight)
        self.linear = is_op("relax.matmul")(self.x, self.transposed)
        self.pattern = self.conv2d | self.linear

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        self.report = []
        self._kept_dense = set()
        builder = relax.BlockBuilder(mod)
        for gvar, func in mod.functions.items():
            if isinstance(func, relax.Function) and not func.attrs.get("Primitive", False):
                rewritten = rewrite_call(self.pattern, lambda expr, m: self._rewrite(builder, expr, m), func)
                builder.update_func(gvar, rewritten)
        return relax.transform.DeadCodeElimination()(builder.get())

    def _rewrite(self, builder: relax.BlockBuilder, expr: relax.Expr, matches) -> relax.Expr:
        weight = matches[self.weight].value.numpy()
        is_conv = self.conv2d in matches
        op = "conv2d" if is_conv else "linear"
        x_shape = static_tensor_shape(matches[self.x])
        fingerprint = weight_fingerprint(weight)
        if (fingerprint, x_shape) in self._kept_dense:  # rewrite_call revisits what it left unchanged
            return expr
        name = self.layer_names.get(fingerprint, f"{op}#{len(self.report)}")
        entry = LayerReport(name, op, tuple(weight.shape), False, "", bytes_dense=int(weight.nbytes))
        self.report.append(entry)
        self._kept_dense.add((fingerprint, x_shape))
        geometry_or_reason = (self._conv_geometry(matches[self.conv2d], x_shape, weight) if is_conv
                              else self._linear_check(matches[self.transposed], x_shape, weight))
        if isinstance(geometry_or_reason, str):
            entry.reason = geometry_or_reason
            return expr
        analysis = analyze(weight, self.specs.get(name))
        if not self._accept(entry, analysis):
            return expr
        self._kept_dense.discard((fingerprint, x_shape))
        dims = geometry_or_reason if is_conv else (x_shape[0], weight.shape[1], weight.shape[0])
        return self._lower(builder, entry, dims, analysis.encoded, matches[self.x], expr.ty)

    def _lower(self, builder: relax.BlockBuilder, entry: LayerReport, dims: Dims, enc: UnifiedWeight,
               x: relax.Expr, ty: relax.Type) -> relax.Expr:
        """The unified kernel's call, plus the free kernel's when the weight has free blocks: an ``add``
        whose first operand is the unified call, the shape the epilogue-fusion pass folds into that
        kernel's store. A weight whose kept blocks are all free needs the free kernel alone."""
        has_free = bool(enc.free_indices.size)
        unified = self._unified_call(builder, entry, dims, enc, x, ty) if enc.nnzb or not has_free else None
        free = self._free_call(builder, entry, dims, enc, x, ty) if has_free else None
        entry.lowered, entry.reason = True, "lowered"
        entry.bytes_after = sum(part[1].nbytes for part in (unified, free) if part)
        entry.padding = unified[1].padding if unified else None
        if free:
            entry.free_blocks, entry.free_padding = free[1].count, free[1].padding
        if unified and free:
            return relax.op.add(unified[0], free[0])
        return (unified or free)[0]

    def _unified_call(self, builder: relax.BlockBuilder, entry: LayerReport, dims: Dims, enc: UnifiedWeight,
                      x: relax.Expr, ty: relax.Type) -> tuple[relax.Call, EllWeight | LutWeight]:
        """The unified blocks' kernel call, in the pass's mode, on the weight form its algorithm reads."""
        act_scale = self.act_scales.get(entry.layer) if self.mode == "int8" else None
        options = KernelOptions(self.mode, act_scale, self.lanes, tasks=self.tasks)
        if entry.op == "conv2d":
            weight = kernel_weight(to_ell(enc), self.mode, dims.pixels)
            kernel = unified_conv2d(dims, weight, enc.spec.layout, options)
        else:
            weight = kernel_weight(to_ell(enc), self.mode, dims[0])
            kernel = unified_dense(*dims, weight, options)
        gvar = builder.add_func(kernel.without_attr("global_symbol"), f"unified_{entry.op}_{self.mode}")
        return relax.call_tir(gvar, [x, *(relax.const(a) for a in weight.arrays)], ty), weight

    def _free_call(self, builder: relax.BlockBuilder, entry: LayerReport, dims: Dims, enc: UnifiedWeight,
                   x: relax.Expr, ty: relax.Type) -> tuple[relax.Call, FreeEll]:
        """The free (dense-valued) blocks' kernel call: fp32 in every mode, since its weights are not +-1."""
        ell = to_free_ell(enc)
        if entry.op == "conv2d":
            kernel = free_conv2d(dims, ell, enc.spec.layout, self.lanes)
        else:
            kernel = free_dense(*dims, ell, self.lanes)
        gvar = builder.add_func(kernel.without_attr("global_symbol"), f"free_{entry.op}")
        return relax.call_tir(gvar, [x, relax.const(ell.columns), relax.const(ell.values)], ty), ell

    @staticmethod
    def _accept(entry: LayerReport, analysis: Analysis) -> bool:
        """Record the verdict. Free blocks are there only if the spec allowed them (``format.verify``)."""
        if not analysis.ok:
            entry.reason = analysis.reason
            return False
        entry.block, entry.sparsity = analysis.encoded.spec.describe(), analysis.encoded.sparsity
        return True

    @staticmethod
    def _conv_geometry(call: relax.Call, x_shape, weight: np.ndarray) -> Conv2dGeometry | str:
        attrs = call.attrs
        if int(attrs.groups) != 1:
            return f"groups={int(attrs.groups)} (depthwise/grouped convs stay dense)"
        layouts = (attrs.data_layout, attrs.kernel_layout, attrs.out_layout or attrs.data_layout)
        if layouts != ("NCHW", "OIHW", "NCHW"):
            return f"layouts {'/'.join(map(str, layouts))} (only NCHW/OIHW)"
        if attrs.out_dtype not in ("", "float32") or x_shape is None or len(x_shape) != 4:
            return "input is not a static float32 NCHW tensor"
        padding = _ints(attrs.padding)
        padding = padding * (4 // len(padding)) if len(padding) in (1, 2) else padding
        return Conv2dGeometry(x_shape[0], x_shape[1], x_shape[2], x_shape[3], weight.shape[0],
                              (weight.shape[2], weight.shape[3]), _ints(attrs.strides), padding,
                              _ints(attrs.dilation))

    @staticmethod
    def _linear_check(transpose: relax.Call, x_shape, weight: np.ndarray) -> str | None:
        axes = transpose.attrs.axes
        if weight.ndim != 2 or (axes is not None and _ints(axes) != (1, 0)):
            return "matmul weight is not a transposed 2D constant"
        if x_shape is None or len(x_shape) != 2:
            return "input is not a static float32 [batch, features] tensor"
        return None
