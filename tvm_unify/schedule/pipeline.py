"""Default CPU schedules for the dense part of a model: the step ``build()`` runs before code generation.

TVM 0.27 legalizes conv2d/matmul into naive loop nests and ships no CPU schedules for them, so an
untuned build runs tens of times slower than PyTorch. ``schedule_default`` prepares the graph so the
hand-written rules find their patterns (kernels in HWIO with activations left NCHW, batch norm
decomposed so it fuses into the conv epilogue), legalizes and fuses, then applies the rules in dlight
style. PrimFuncs marked ``tirx.is_scheduled`` (the unified kernels) keep their schedule: they are
never fused with other ops by FuseOps nor re-scheduled (an ``op_pattern`` they set themselves is
respected). The elementwise ops after a unified kernel (bias, BatchNorm, residual add, ReLU/ReLU6) are
fused into it by ``FuseUnifiedEpilogue`` instead, once BatchNorm is decomposed and its constants folded.
"""

from __future__ import annotations

import tvm
from tvm import relax, tirx
from tvm.ir.transform import PassContext, module_pass
from tvm.s_tir import ScheduleError
from tvm.s_tir import dlight as dl

from ..passes.fuse_epilogue import FuseUnifiedEpilogue
from .contraction import Contraction
from .fallback import Fallback
from .fold import FoldConstantsNumpy

# Kernel layout for every conv2d: output channels innermost, so the weight row for a tile of output
# channels is one contiguous vector; data and outputs keep NCHW, so no activation transposes appear.
CONV_LAYOUT = {"relax.nn.conv2d": ["NCHW", "HWIO"]}

SCHEDULED = "tirx.is_scheduled"
RULE_ATTR = "tvm_unify.schedule_rule"


def default_rules() -> list[dl.ScheduleRule]:
    """The CPU rules, most specific first; the first rule that applies to a PrimFunc wins."""
    return [Contraction(), dl.cpu.GEMV(), dl.cpu.Reduction(), Fallback()]


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


# relax.transform.AnnotateTIROpPattern's kOpaque: FuseOps never fuses such a function with others.
OPAQUE_PATTERN = 8


@module_pass(opt_level=0, name="KeepScheduledOpaque")
class KeepScheduledOpaque:
    """Mark already-scheduled PrimFuncs opaque so fusion cannot merge them into unscheduled functions.

    FuseTIR would otherwise splice a hand-scheduled kernel and its epilogue into a new function
    without ``tirx.is_scheduled``, and the default rules would then schedule its blocks again.
    """

    def transform_module(self, mod: tvm.IRModule, _ctx: PassContext) -> tvm.IRModule:
        for gvar, func in list(mod.functions_items()):
            if _is_scheduled(func) and "op_pattern" not in func.attrs:
                mod[gvar] = func.with_attr("op_pattern", OPAQUE_PATTERN)
        return mod


def _is_scheduled(func: tvm.ir.BaseFunc) -> bool:
    return isinstance(func, tirx.PrimFunc) and int(func.attrs.get(SCHEDULED, 0)) == 1


@module_pass(opt_level=0, name="ApplyDefaultSchedules")
class ApplyDefaultSchedules:
    """Schedule every PrimFunc not marked ``tirx.is_scheduled`` with the first rule that applies.

    Like dlight's ApplyDefaultSchedule, but each scheduled function records the rule's name in
    ``tvm_unify.schedule_rule``, so reports and tests can tell which rule handled which layer.
    """

    def __init__(self, rules: list[dl.ScheduleRule] | None = None) -> None:
        self.rules = default_rules() if rules is None else rules

    def transform_module(self, mod: tvm.IRModule, _ctx: PassContext) -> tvm.IRModule:
        target = tvm.target.Target.current(allow_none=False)
        for gvar, func in list(mod.functions_items()):
            if not isinstance(func, tirx.PrimFunc) or _is_scheduled(func):
                continue
            for rule in self.rules:
                try:
                    sch = rule.apply(func, func.attrs.get("target", target), False)
                except ScheduleError:  # the rule's pattern matched but a primitive refused: next rule
                    continue
                if sch is not None:
                    mod[gvar] = sch.mod["main"].with_attrs({SCHEDULED: True, RULE_ATTR: type(rule).__name__})
                    break
        return mod


def schedule_default(mod: tvm.IRModule, target: tvm.target.Target, fuse_epilogues: bool = True) -> tvm.IRModule:
    """Legalize, fuse and schedule every not-yet-scheduled PrimFunc of ``mod`` for ``target``."""
    with target:
        mod = tvm.transform.Sequential(prepare_passes(fuse_epilogues))(mod)
        return ApplyDefaultSchedules()(mod)
