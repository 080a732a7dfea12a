"""The compile pipeline after lowering, like ``tvm.relax.pipeline``: the Relax pass list that puts the
graph in the form the schedule rules expect, the rules, and code generation for a target.

TVM 0.27 legalizes conv2d/matmul into naive loop nests and ships no CPU schedules for them, so an
untuned build runs tens of times slower than PyTorch. ``schedule_default`` prepares the graph so the
hand-written rules find their patterns (kernels in HWIO with activations left NCHW, batch norm
decomposed so it fuses into the conv epilogue), legalizes and fuses, then applies the rules in dlight
style. PrimFuncs marked ``tirx.is_scheduled`` (the unified kernels) keep their schedule: they are
never fused with other ops by FuseOps nor re-scheduled. The elementwise ops after a unified kernel
(bias, BatchNorm, residual add, ReLU/ReLU6) are fused into it by ``FuseUnifiedEpilogue`` instead, once
BatchNorm is decomposed and its constants folded.

OpenCL targets (mobile GPUs, PoCL here) take the same passes, then dlight's GPU rules instead of the
CPU ones, and every kernel must end up bound to GPU threads (``require_gpu_kernels``): TVM would build
a function left unscheduled as host code, which runs on the CPU or fails only on the device.
"""

from __future__ import annotations

import time
from typing import Callable

import tvm
from tvm import relax, tirx
from tvm.relax.backend import gpu_generic
from tvm.s_tir import dlight as dl

from .errors import UserError
from .passes import (FoldConstantsNumpy, FuseUnifiedEpilogue, GenerateDeferredKernels, KeepScheduledOpaque,
                     LowerPlanarConv2d)
from .kernels.planar import PlanarConv
from .runtime.opencl_setup import ensure_opencl_runtime
from .schedule import ApplyDefaultSchedules
from .targets import TargetPreset

# Kernel layout for every conv2d: output channels innermost, so the weight row for a tile of output
# channels is one contiguous vector; data and outputs keep NCHW, so no activation transposes appear.
CONV_LAYOUT = {"relax.nn.conv2d": ["NCHW", "HWIO"]}


PlanarChooser = Callable[[PlanarConv], PlanarConv]


def prepare_passes(fuse_epilogues: bool = True, planar: PlanarChooser | None = None) -> list[tvm.transform.Pass]:
    """Relax passes that put the graph in the form the rules expect, then legalize and fuse.

    ``fuse_epilogues=False`` leaves the ops after unified kernels as separate kernels (to measure or
    test what the fusion changes); ``planar`` picks the planar kernels' knobs (``LowerPlanarConv2d``)."""
    return [
        relax.transform.DecomposeOpsForInference(),
        relax.transform.CanonicalizeBindings(),
        LowerPlanarConv2d(planar),  # CPU targets; before the layout conversion, which would transpose its weights
        relax.transform.ConvertLayout(CONV_LAYOUT),
        FoldConstantsNumpy(),
        *([FuseUnifiedEpilogue()] if fuse_epilogues else []),
        GenerateDeferredKernels(),  # the deferred kernels the fusion did not regenerate
        KeepScheduledOpaque(),  # after the fusion, which adds scheduled kernels
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ]


def gpu_rules() -> list[dl.ScheduleRule]:
    """dlight's GPU rules, most specific first (the list of TVM's generic GPU pipeline)."""
    return [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()]


def is_gpu(target: tvm.target.Target) -> bool:
    return target.kind.name == "opencl"


def schedule_default(mod: tvm.IRModule, target: tvm.target.Target, fuse_epilogues: bool = True,
                     tuned: Callable[[tvm.IRModule], None] | None = None,
                     planar: PlanarChooser | None = None) -> tvm.IRModule:
    """Legalize, fuse and schedule every not-yet-scheduled PrimFunc of ``mod`` for ``target``: the CPU
    rules, or for OpenCL dlight's GPU rules, after which every kernel must be thread-bound. ``tuned``
    first installs tuning records in the prepared module (``tuning.install_dense``); ``planar`` picks
    the planar kernels' knobs (``tuning.RecordChooser.planar``)."""
    with target:
        mod = tvm.transform.Sequential(prepare_passes(fuse_epilogues, planar))(mod)
        if tuned is not None:
            tuned(mod)
        if not is_gpu(target):
            return ApplyDefaultSchedules()(mod)
        mod = ApplyDefaultSchedules(gpu_rules())(mod)
    require_gpu_kernels(mod, target)
    return mod


def require_gpu_kernels(mod: tvm.IRModule, target: tvm.target.Target) -> None:
    """Raise a one-line UserError naming the first PrimFunc of ``mod`` that no GPU thread runs."""
    for gvar, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc) and not _thread_bound(func):
            raise UserError(f"no GPU schedule for {gvar.name_hint} on {target.kind.name}: it binds no GPU thread "
                            "(no GPU rule applies, or it came scheduled for a CPU) and would run as host code")


def _thread_bound(func: tirx.PrimFunc) -> bool:
    """Whether ``func`` binds a loop to GPU threads (read from its script: TVM 0.27 exposes no TIR
    visitor to Python, and ``verify_memory`` only sees bindings once lowered to ``thread_extent``)."""
    text = func.script(show_meta=False)
    return "T.thread_binding(" in text or "T.launch_thread(" in text


def codegen_target(preset: TargetPreset) -> tvm.target.Target:
    """The preset's TVM target; a host preset without ``mcpu`` gets this machine's CPU.

    Plain ``llvm`` generates baseline x86-64 code (SSE2, no FMA): 4-wide vectors where this host
    has AVX-512. A host build only ever runs here, so it may use every instruction this CPU has.
    """
    if preset.is_host and preset.device == "cpu" and "mcpu" not in preset.target:
        return tvm.target.Target({**preset.target, "mcpu": tvm.target.codegen.llvm_get_system_cpu()})
    return preset.tvm_target()


def build(mod: tvm.IRModule, preset: TargetPreset, tuned: Callable[[tvm.IRModule], None] | None = None,
          timings: dict[str, float] | None = None, planar: PlanarChooser | None = None) -> tvm.runtime.Executable:
    """Schedule the dense layers (``tuned`` and ``planar`` records first, see ``schedule_default``, then the
    default rules of the preset's device), then lower and generate code for ``preset``; ``timings`` receives
    the seconds of both stages (``kernels + schedule``: the graph passes, which generate the hand-written
    kernels with their epilogues, and the rules; ``codegen``).

    An OpenCL build for this machine loads the OpenCL runtime first, so TVM packs the kernels into a
    module that runs (``docs/opencl-runtime.md``); a cross build does not need it."""
    target = codegen_target(preset)
    if preset.device == "opencl" and preset.is_host:
        ensure_opencl_runtime()
    timings = {} if timings is None else timings
    with target:
        start = time.perf_counter()
        mod = schedule_default(mod, target, tuned=tuned, planar=planar)
        timings["kernels + schedule"] = time.perf_counter() - start
        start = time.perf_counter()
        executable = tvm.compile(mod, target=target,
                                 relax_pipeline=gpu_lowering(target) if is_gpu(target) else "default")
        timings["codegen"] = time.perf_counter() - start
        return executable


def gpu_lowering(target: tvm.target.Target) -> tvm.transform.Pass:
    """TVM's GPU Relax pipeline without its legalization and scheduling, which ``schedule_default`` did.

    Run whole, it would legalize, fold constants and schedule the scheduled module again; the Adreno one
    also binds the OpenCL target to every PrimFunc first, so a call on constants only (a bias reshape,
    when constants were not folded before scheduling) is evaluated through its OpenCL kernel on CPU
    tensors and fails (``Mismatched A.device_type ... expected opencl``). What a scheduled module still
    needs are the lowering and finalization passes, which are the generic GPU ones for Adreno too."""
    return tvm.transform.Sequential([*gpu_generic.dataflow_lower_passes(target), *gpu_generic.finalize_passes(target)])
