"""Tuning tasks: the distinct kernels of a prepared (legalized, fused) module, weighted by how often the
model calls them, in the normalized form meta-schedule keys its database by."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import tvm
import tvm_ffi
from tvm import relax, tirx
from tvm.s_tir.analysis import estimate_tir_flops

MIN_FLOP_SHARE = 1e-3  # kernels below 0.1% of the model's FLOPs (reshape, mean, classifier) are not tuned
NORMALIZE = tvm.get_global_func("tvm.s_tir.meta_schedule.normalize_mod")  # meta-schedule's workload form


@dataclass
class Task:
    """One distinct kernel of a prepared module.

    ``mod`` is the kernel normalized the way meta-schedule normalizes workloads, so tuning commits and
    compiling queries the same database key; ``gvars`` are the module's functions that are this kernel,
    ``weight`` the number of calls to them in ``main``.
    """

    name: str
    mod: tvm.IRModule
    flops: float
    gvars: list[tvm.ir.GlobalVar] = field(default_factory=list)
    weight: int = 0

    @property
    def cost(self) -> float:
        """Expected share of the model's work: FLOPs x occurrences."""
        return self.flops * self.weight


def call_counts(mod: tvm.IRModule) -> Counter[str]:
    """How many times ``main`` calls each PrimFunc (by name)."""
    calls: Counter[str] = Counter()

    def visit(expr: relax.Expr) -> None:
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == "relax.call_tir":
            calls[expr.args[0].name_hint] += 1

    relax.analysis.post_order_visit(mod["main"], visit)
    return calls


def kernel_tasks(mod: tvm.IRModule) -> list[Task]:
    """The distinct PrimFuncs of a prepared module, heaviest (FLOPs x occurrences) first."""
    calls = call_counts(mod)
    tasks: dict[tvm_ffi.StructuralKey, Task] = {}
    for gvar, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc):
            task_mod = NORMALIZE(func)
            task = tasks.setdefault(tvm_ffi.StructuralKey(task_mod),
                                    Task(gvar.name_hint, task_mod, _flops(task_mod)))
            task.gvars.append(gvar)
            task.weight += calls[gvar.name_hint]
    return sorted(tasks.values(), key=lambda t: (-t.cost, t.name))


def _flops(mod: tvm.IRModule) -> float:
    """TVM's FLOP estimate, or 0 for a kernel it cannot walk: the aarch64 int8 unified kernels use vector
    shuffles (``sdot``'s lane splat, ``smmla``'s pixel zips), which ``estimate_tir_flops`` has no rule for;
    they are hand-scheduled, never a meta-schedule task."""
    try:
        return estimate_tir_flops(mod)
    except tvm.error.InternalError:
        return 0.0


def tunable(tasks: list[Task]) -> list[Task]:
    """The tasks worth tuning trials: at least ``MIN_FLOP_SHARE`` of the model's FLOPs."""
    total = sum(t.cost for t in tasks)
    return [t for t in tasks if t.cost >= MIN_FLOP_SHARE * total]


def random_inputs(func: tirx.PrimFunc, seed: int = 0) -> list[np.ndarray]:
    """Random (float) or zero (integer) arrays for every input of ``func`` (all parameters but the last,
    its output): every version of one kernel is measured on the same ones."""
    rng = np.random.default_rng(seed)
    arrays = []
    for param in func.params[:-1]:
        shape, dtype = [int(d) for d in param.shape], str(param.dtype)
        arrays.append(rng.standard_normal(shape).astype(dtype) if "float" in dtype else np.zeros(shape, dtype))
    return arrays
