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
"""

from __future__ import annotations

import tvm
from tvm import relax

from .passes import FoldConstantsNumpy, FuseUnifiedEpilogue, KeepScheduledOpaque
from .schedule import ApplyDefaultSchedules
from .targets import TargetPreset

# Kernel layout for every conv2d: output channels innermost, so the weight row for a tile of output
# channels is one contiguous vector; data and outputs keep NCHW, so no activation transposes appear.
CONV_LAYOUT = {"relax.nn.conv2d": ["NCHW", "HWIO"]}


def prepare_passes(fuse_epilogues: bool = True) -> list[tvm.transform.Pass]:
    """Relax passes that put the graph in the form the rules expect, then legalize and fuse.

    ``fuse_epilogues=False`` leaves the ops after unified kernels as separate kernels (to measure or
    test what the fusion changes)."""
    return [
        relax.transform.DecomposeOpsForInference(),
        relax.transform.CanonicalizeBindings(),
        relax.transform.ConvertLayout(CONV_LAYOUT),
        FoldConstantsNumpy(),
        *([FuseUnifiedEpilogue()] if fuse_epilogues else []),
        KeepScheduledOpaque(),  # after the fusion, which adds scheduled kernels
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ]


def schedule_default(mod: tvm.IRModule, target: tvm.target.Target, fuse_epilogues: bool = True) -> tvm.IRModule:
    """Legalize, fuse and schedule every not-yet-scheduled PrimFunc of ``mod`` for ``target``."""
    with target:
        mod = tvm.transform.Sequential(prepare_passes(fuse_epilogues))(mod)
        return ApplyDefaultSchedules()(mod)


def codegen_target(preset: TargetPreset) -> tvm.target.Target:
    """The preset's TVM target; a host preset without ``mcpu`` gets this machine's CPU.

    Plain ``llvm`` generates baseline x86-64 code (SSE2, no FMA): 4-wide vectors where this host
    has AVX-512. A host build only ever runs here, so it may use every instruction this CPU has.
    """
    if preset.is_host and "mcpu" not in preset.target:
        return tvm.target.Target({**preset.target, "mcpu": tvm.target.codegen.llvm_get_system_cpu()})
    return preset.tvm_target()


def build(mod: tvm.IRModule, preset: TargetPreset) -> tvm.runtime.Executable:
    """Schedule the dense layers with the default CPU rules, then lower and generate code for ``preset``."""
    target = codegen_target(preset)
    with target:
        mod = schedule_default(mod, target)
        return tvm.compile(mod, target=target)
