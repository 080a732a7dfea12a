"""Applying the default CPU rules: dlight's ApplyDefaultSchedule, recording which rule took each kernel.

PrimFuncs marked ``tirx.is_scheduled`` (the unified kernels, and anything a rule already scheduled)
keep their schedule.
"""

from __future__ import annotations

import tvm
from tvm import tirx
from tvm.ir.transform import PassContext, module_pass
from tvm.s_tir import ScheduleError
from tvm.s_tir import dlight as dl

from .contraction import Contraction
from .fallback import Fallback

SCHEDULED = "tirx.is_scheduled"
RULE_ATTR = "tvm_unify.schedule_rule"


def default_rules() -> list[dl.ScheduleRule]:
    """The CPU rules, most specific first; the first rule that applies to a PrimFunc wins."""
    return [Contraction(), dl.cpu.GEMV(), dl.cpu.Reduction(), Fallback()]


def is_scheduled(func: tvm.ir.BaseFunc) -> bool:
    """True for a PrimFunc that carries its own schedule (no rule may touch it)."""
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
            if not isinstance(func, tirx.PrimFunc) or is_scheduled(func):
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
