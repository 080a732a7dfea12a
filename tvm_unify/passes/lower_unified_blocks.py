"""``LowerUnifiedBlocks``: replace conv2d / linear layers whose constant weights are unified by calls to
block-sparse TIR kernels that take the compressed weight as constants.

Analyse, then rewrite (the shape of TVM's ``FoldBatchnormToConv2D``, with the decisions made first):

- patterns: ``nn.conv2d(x, W)`` and ``matmul(x, permute_dims(W))`` (how the torch importer writes a
  Linear) with ``W`` constant;
- analyse: every match is checked (static shapes, groups, layouts) and every block of W numerically
  (``format.analyze``) against the file's spec when there is one (never trusted: a wrong block shape or
  sparsity claim fails), else against the candidate block shapes. The verdicts are the report; a
  layer that fails stays dense, and the report says why. Its kernels are generated here too;
- rewrite (pure): ``R.call_tir(kernel, [x, *weight arrays])`` with the kernel specialized to the layer's
  shapes and block pattern (``kernels/``); a weight whose spec allows free (dense) blocks and has some
  gets ``R.add(that call, R.call_tir(free_kernel, [x, columns, values]))``. Bias, BatchNorm and
  activations around it stay Relax ops, which the pipeline fuses into the kernel's store
  (``FuseUnifiedEpilogue``) or legalizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Collection, Mapping

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

from ..errors import UserError
from ..format import Analysis, BlockSpec, UnifiedWeight, analyze, weight_fingerprint
from ..kernels import (DEFAULT_LANES, DEFAULT_TASKS, MODES, Conv2dGeometry, EllWeight, KernelOptions, LutWeight,
                       cpu_features, free_conv2d, free_dense, target_options, to_ell, to_free_ell)
from ..kernels.unified import UnifiedLayer
from ..kernels.gpu import (FP32, GpuLimits, GpuPrecision, gpu_conv2d, gpu_dense, gpu_free_conv2d, gpu_free_dense,
                           gpu_weight, is_gpu_target)
from .report import LayerReport
from .shapes import CONV2D_LAYOUTS, conv2d_geometry, conv2d_layouts, static_tensor_shape


# What a kernel generator needs besides the weight: the conv geometry, or a linear's (batch, in, out).
Dims = Conv2dGeometry | tuple[int, int, int]


def _ints(values) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


@dataclass(frozen=True)
class Kernel:
    """A generated kernel and the constant arrays its call passes after the input."""

    func: tvm.tirx.PrimFunc
    name: str
    arrays: tuple[np.ndarray, ...]


@dataclass
class LayerPlan:
    """The analysis of one conv2d/linear: its report row and the kernels that replace it (none: it
    stays dense). With two kernels the first is the unified one and the second the free blocks'."""

    report: LayerReport
    kernels: list[Kernel] = field(default_factory=list)


# A layer's identity in the graph: its weight's value, its input shape, and the op.
LayerKey = tuple[str, tuple[int, ...] | None, str]


@tvm.transform.module_pass(opt_level=0, name="LowerUnifiedBlocks")
class LowerUnifiedBlocks:
    """Lower unified conv2d/linear layers to block-sparse kernels (``mode`` fp32 or int8).

    ``layer_names`` maps ``weight_fingerprint`` -> module path (for the report and the spec lookup),
    ``specs`` maps module path -> ``BlockSpec`` (from the TorchScript metadata), ``act_scales`` maps module
    path -> int8 activation scale (absent: computed per call from max |x|), ``fp32_layers`` the module
    paths an int8 build keeps in fp32 (``frontend.int8_fp32_fallback``), ``tasks`` is the parallel
    task count of the table-lookup kernels (the target device's cores), ``target`` the codegen target
    the kernels are generated for (None: generic CPU kernels; an OpenCL target gets the GPU kernels of
    ``kernels/gpu.py`` in ``precision``, fp32 unless the graph was converted to fp16 first, see
    ``compiler.to_gpu_precision``), ``choose`` the CPU kernel options per layer (tuning records,
    ``tuning/``; None: the defaults). With ``defer``, CPU unified kernels are left as signatures
    (``UnifiedLayer.signature``) for the compile pipeline to generate once their epilogue is known
    (``FuseUnifiedEpilogue``, ``GenerateDeferredKernels``). After the pass has run, ``report`` lists every
    conv2d/linear layer it saw.
    """

    def __init__(self, mode: str = "fp32", specs: Mapping[str, BlockSpec] | None = None,
                 layer_names: Mapping[str, str] | None = None, act_scales: Mapping[str, float] | None = None,
                 lanes: int = DEFAULT_LANES, tasks: int = DEFAULT_TASKS,
                 target: tvm.target.Target | None = None,
                 choose: Callable[[UnifiedLayer], KernelOptions] | None = None,
                 precision: GpuPrecision = FP32, fp32_layers: Collection[str] = (), defer: bool = False) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r} (choose from {', '.join(MODES)})")
        self.mode = mode
        self.specs = dict(specs or {})
        self.layer_names = dict(layer_names or {})
        self.act_scales = dict(act_scales or {})
        self.fp32_layers = frozenset(fp32_layers)
        self.lanes = lanes
        self.tasks = tasks
        self.target = target
        self.choose = choose
        self.defer = defer
        self.gpu = GpuLimits.of(target) if is_gpu_target(target) else None
        if self.gpu is not None and mode != "fp32":
            raise UserError(f"{mode} unified kernels run on CPUs only: build for {target.kind.name} with --mode fp32")
        if self.gpu is None and precision is not FP32:
            raise UserError(f"--gpu-precision {precision.name} is for OpenCL targets only")
        self.precision = precision
        self.report: list[LayerReport] = []
        self.x = wildcard()
        self.weight = is_const()
        stored = self.weight | is_op("relax.astype")(self.weight)  # an fp16 graph (ToMixedPrecision) casts it
        self.conv2d = is_op("relax.nn.conv2d")(self.x, stored)
        self.transposed = is_op("relax.permute_dims")(stored)
        self.linear = is_op("relax.matmul")(self.x, self.transposed)
        self.pattern = self.conv2d | self.linear

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        plans = self.analyze(mod)
        self.report = [plan.report for plan in plans.values()]
        builder = relax.BlockBuilder(mod)
        gvars = {key: [builder.add_func(k.func.without_attr("global_symbol"), k.name) for k in plan.kernels]
                 for key, plan in plans.items()}

        def rewriter(expr: relax.Expr, matches) -> relax.Expr:
            key = self._key(matches)
            return self._call(plans[key], gvars[key], matches[self.x], expr.ty) if gvars.get(key) else expr

        for gvar, func in mod.functions.items():
            if self._lowers(func):
                builder.update_func(gvar, rewrite_call(self.pattern, rewriter, func))
        return relax.transform.DeadCodeElimination()(builder.get())

    def analyze(self, mod: tvm.IRModule) -> dict[LayerKey, LayerPlan]:
        """Every conv2d/linear of ``mod``'s Relax functions, in program order, with its verdict."""
        plans: dict[LayerKey, LayerPlan] = {}
        for func in mod.functions.values():
            if not self._lowers(func):
                continue
            var2val = relax.analysis.get_var2val(func)
            for call in _calls(func):
                matches = self.pattern.extract_matched_expr(call, var2val)
                if matches is not None and (key := self._key(matches)) not in plans:
                    plans[key] = self._plan(matches, len(plans))
        return plans

    @staticmethod
    def _lowers(func: tvm.ir.BaseFunc) -> bool:
        return isinstance(func, relax.Function) and not func.attrs.get("Primitive", False)

    def _key(self, matches) -> LayerKey:
        op = "conv2d" if self.conv2d in matches else "linear"
        return (weight_fingerprint(matches[self.weight].value.numpy()),
                static_tensor_shape(matches[self.x], self.precision.storage), op)

    def _plan(self, matches, index: int) -> LayerPlan:
        """Check the layer and its blocks; generate its kernels if it lowers."""
        weight = matches[self.weight].value.numpy()
        fingerprint, x_shape, op = self._key(matches)
        name = self.layer_names.get(fingerprint, f"{op}#{index}")
        plan = LayerPlan(LayerReport(name, op, tuple(weight.shape), False, "", bytes_dense=int(weight.nbytes)))
        dims = (self._conv_geometry(matches[self.conv2d], x_shape, weight) if op == "conv2d"
                else self._linear_dims(matches[self.transposed], x_shape, weight))
        if isinstance(dims, str):
            plan.report.reason = dims
            return plan
        analysis = analyze(weight, self.specs.get(name))
        if self._accept(plan.report, analysis):
            plan.kernels = self._kernels(plan.report, dims, analysis.encoded)
        return plan

    def _kernels(self, entry: LayerReport, dims: Dims, enc: UnifiedWeight) -> list[Kernel]:
        """The unified kernel, plus the free kernel when the weight has free blocks (a weight whose kept
        blocks are all free needs the free kernel alone); fills in the report's sizes."""
        has_free = bool(enc.free_indices.size)
        kernels = []
        if enc.nnzb or not has_free:
            weight = self._unified_kernel(entry, dims, enc, kernels)
            entry.padding = weight.padding
            entry.bytes_after += weight.nbytes
        if has_free:
            ell = to_free_ell(enc)
            if self.gpu is not None:
                ell = gpu_weight(ell, self.precision)
                func = (gpu_free_conv2d(dims, ell, enc.spec.layout, self.gpu, self.precision) if entry.op == "conv2d"
                        else gpu_free_dense(*dims, ell, self.gpu, self.precision))
            else:
                func = (free_conv2d(dims, ell, enc.spec.layout, self.lanes) if entry.op == "conv2d"
                        else free_dense(*dims, ell, self.lanes))
            kernels.append(Kernel(func, f"free_{entry.op}", ell.arrays))
            entry.free_blocks, entry.free_padding = ell.count, ell.padding
            entry.bytes_after += ell.nbytes
        entry.lowered, entry.reason = True, "lowered"
        return kernels

    def _unified_kernel(self, entry: LayerReport, dims: Dims, enc: UnifiedWeight,
                        kernels: list[Kernel]) -> EllWeight | LutWeight:
        """Append the unified blocks' kernel, in the pass's mode, on the weight form its algorithm reads."""
        if self.gpu is not None:
            return self._gpu_kernel(entry, dims, enc, kernels)
        mode = "fp32" if entry.layer in self.fp32_layers else self.mode
        entry.fp32_fallback = mode != self.mode
        act_scale = self.act_scales.get(entry.layer) if mode == "int8" else None
        conv = entry.op == "conv2d"
        columns, group = (dims.pixels, dims.out_hw[0] * dims.out_hw[1]) if conv else (dims[0], dims[0])
        row = dims.out_hw[1] if conv and not dims.reads_input_in_place else None  # a gathered conv's rows
        options = target_options(KernelOptions(mode, act_scale, self.lanes, tasks=self.tasks),
                                 cpu_features(self.target), enc.spec.shape, columns, group, row)
        layer = UnifiedLayer(entry.layer, entry.op, dims, enc.spec.layout, to_ell(enc), options)
        chosen = options if self.choose is None else self.choose(layer)
        func, weight = layer.signature(chosen) if self.defer else layer.kernel(chosen)
        kernels.append(Kernel(func, f"unified_{entry.op}_{mode}", weight.arrays))
        return weight

    def _gpu_kernel(self, entry: LayerReport, dims: Dims, enc: UnifiedWeight, kernels: list[Kernel]) -> EllWeight:
        """Append the unified blocks' OpenCL kernel (``kernels/gpu.py``, in the pass's precision), which
        reads the ``EllWeight`` (scales in the precision's storage dtype)."""
        weight = gpu_weight(to_ell(enc), self.precision)
        func = (gpu_conv2d(dims, weight, enc.spec.layout, KernelOptions(), self.gpu, self.precision)
                if entry.op == "conv2d" else gpu_dense(*dims, weight, KernelOptions(), self.gpu, self.precision))
        kind = "gpu" if self.precision is FP32 else self.precision.name.replace("-", "_") + "_gpu"
        kernels.append(Kernel(func, f"unified_{entry.op}_{kind}", weight.arrays))
        return weight

    def _call(self, plan: LayerPlan, gvars: list[tvm.ir.GlobalVar], x: relax.Expr, ty: relax.Type) -> relax.Expr:
        """The kernels' calls; two are summed with the unified call first, the shape the epilogue-fusion
        pass folds into that kernel's store. fp16 kernels store half; where the op summed into float32
        (fp16 storage, fp32 accumulation) a cast gives the graph the type it had, and fuses into the
        next element-wise kernel."""
        storage = self.precision.storage if self.gpu is not None else str(ty.dtype)
        out_ty = ty if storage == str(ty.dtype) else relax.TensorType(ty.shape, storage)
        calls = [relax.call_tir(gvar, [x, *(relax.const(a) for a in kernel.arrays)], out_ty)
                 for gvar, kernel in zip(gvars, plan.kernels)]
        call = relax.op.add(*calls) if len(calls) == 2 else calls[0]
        return call if out_ty is ty else relax.op.astype(call, str(ty.dtype))

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
            return f"groups={int(attrs.groups)} (depthwise/grouped convs stay dense; on CPUs depthwise ones run the planar kernel)"
        layouts = conv2d_layouts(attrs)
        if layouts != CONV2D_LAYOUTS:
            return f"layouts {'/'.join(layouts)} (only NCHW/OIHW)"
        if str(attrs.out_dtype) not in ("", "void", "float32", "float16") or x_shape is None or len(x_shape) != 4:
            return "input is not a static NCHW tensor of the kernels' dtype"
        return conv2d_geometry(attrs, x_shape, weight.shape)

    @staticmethod
    def _linear_dims(transpose: relax.Call, x_shape, weight: np.ndarray) -> tuple[int, int, int] | str:
        """(batch, in, out) of a linear, or why it cannot be lowered."""
        axes = transpose.attrs.axes
        if weight.ndim != 2 or (axes is not None and _ints(axes) != (1, 0)):
            return "matmul weight is not a transposed 2D constant"
        if x_shape is None or len(x_shape) != 2:
            return "input is not a static [batch, features] tensor of the kernels' dtype"
        return (x_shape[0], weight.shape[1], weight.shape[0])


def _calls(func: relax.Function) -> list[relax.Call]:
    """Every call in ``func``, in program order."""
    calls: list[relax.Call] = []
    relax.analysis.post_order_visit(func, lambda e: calls.append(e) if isinstance(e, relax.Call) else None)
    return calls
