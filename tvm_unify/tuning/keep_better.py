"""Keep-the-better: per kernel, whichever is faster of the database's best record and the default
schedule, each timed alone on the same random inputs (here, or on the device the kernels were tuned on),
so tuning can never make a kernel slower."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import tvm
from tvm import tirx
from tvm.s_tir import meta_schedule as ms

from ..schedule import SCHEDULED, ApplyDefaultSchedules
from .records import workload_hash
from .tasks import Task, kernel_tasks, random_inputs
from .units import cost_text
from .tune import valid_records

if TYPE_CHECKING:
    from .runners import RemoteRunner

RACE_ROUNDS = 3  # alternating timing rounds per kernel race (min over all of them)
RACE_REPEATS = 5
RACE_MIN_REPEAT_MS = 10
RTOL = 1e-4  # a tuned kernel's output may differ from the default's by this much (summation order)


@dataclass
class Race:
    """Per-kernel outcome of keep-the-better: seconds per call of the default schedule and of the best
    database record, how many valid records the database holds for the kernel, its workload hash
    (``records.workload_hash``) and whether the tuned kernel computes what the default one does."""

    task: str
    weight: int
    default: float
    tuned: float
    records: int
    workload: str = ""
    agrees: bool = True

    @property
    def best(self) -> float:
        return min(self.default, self.tuned)

    @property
    def winner(self) -> str:
        return "tuned" if self.agrees and self.tuned < self.default else "default"


def default_kernel(task_mod: tvm.IRModule, target: tvm.target.Target) -> tirx.PrimFunc:
    """The kernel as the project's default rules schedule it (on a copy: the pass updates its input)."""
    with target:
        return ApplyDefaultSchedules()(tvm.IRModule({"main": task_mod["main"]}))["main"]


def kernel_seconds(funcs: dict[str, tirx.PrimFunc], target: tvm.target.Target
                   ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Seconds per call of each version of one kernel, timed alone on the same random inputs in the
    current thread pool: minimum over ``RACE_ROUNDS`` alternating rounds, so a burst of load from
    other processes cannot decide the race; and each version's output (its last parameter) on them."""
    libs = {label: tirx.build(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}), target=target)
            for label, f in funcs.items()}
    func = next(iter(funcs.values()))
    inputs = [*random_inputs(func), np.zeros([int(d) for d in func.params[-1].shape], str(func.params[-1].dtype))]
    outputs = {}
    for label, lib in libs.items():
        args = [tvm.runtime.tensor(a) for a in inputs]
        lib["main"](*args)
        outputs[label] = args[-1].numpy()
    args = [tvm.runtime.tensor(a) for a in inputs]
    best = dict.fromkeys(funcs, math.inf)
    for _ in range(RACE_ROUNDS):
        for label, lib in libs.items():
            evaluator = lib.time_evaluator("main", tvm.cpu(), repeat=RACE_REPEATS, min_repeat_ms=RACE_MIN_REPEAT_MS)
            best[label] = min(best[label], min(evaluator(*args).results))
    return best, outputs


def device_costs(funcs: dict[str, tirx.PrimFunc], target: tvm.target.Target, device: "RemoteRunner"
                 ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """``kernel_seconds`` on a device: each version as a one-kernel model on the same inputs, the minimum
    over ``RACE_ROUNDS`` alternating rounds of timings (one round of instruction counts: they are exact)."""
    # imported here: through the runners, ms_device imports the compiler, which imports this package
    from .ms_device import build_kernel, measure_on_device

    builds = {label: build_kernel(f, target) for label, f in funcs.items()}
    libraries = {label: device.export(executable) for label, (executable, _) in builds.items()}
    best = dict.fromkeys(funcs, math.inf)
    outputs = {}
    for _ in range(1 if device.unit == "instructions" else RACE_ROUNDS):
        for label, library in libraries.items():
            seconds, outputs[label] = measure_on_device(device, library, builds[label][1])
            best[label] = min(best[label], seconds)
    return best, outputs


def agree(ours: np.ndarray, reference: np.ndarray) -> bool:
    """Whether ``ours`` matches ``reference`` within ``RTOL`` of its largest magnitude."""
    return bool(np.abs(ours - reference).max(initial=0) <= RTOL * max(np.abs(reference).max(initial=0), 1e-30))


def keep_better(mod: tvm.IRModule, database: ms.database.Database, target: tvm.target.Target,
                log: Callable[[str], None] = print, device: "RemoteRunner | None" = None
                ) -> tuple[tvm.IRModule, list[Race], int]:
    """Install, in every kernel of the prepared module that is not scheduled yet (the unified kernels
    are), the faster of the database's best record and the default schedule, raced here or on
    ``device``; kernels without a record get the default. Returns the module, the races run and the
    number of distinct kernels."""
    races = []
    tasks = kernel_tasks(mod)
    for task in tasks:
        if int(mod[task.gvars[0]].attrs.get(SCHEDULED, 0)):
            continue
        versions = {"default": default_kernel(task.mod, target)}
        schedule = database.query_schedule(task.mod, target, "main")
        if schedule is not None:
            versions["tuned"] = schedule.mod["main"]
            seconds, outputs = (kernel_seconds(versions, target) if device is None
                                else device_costs(versions, target, device))
            race = Race(task.name, task.weight, seconds["default"], seconds["tuned"], valid_records(database, task),
                        workload_hash(task.mod), agree(outputs["tuned"], outputs["default"]))
            races.append(race)
            unit = device.unit if device else "s"
            log(f"    {task.name}: default {cost_text(race.default, unit)}, tuned {cost_text(race.tuned, unit)} "
                f"({race.records} records{'' if race.agrees else ', OUTPUT DIFFERS'}): keep {race.winner}")
            best = versions[race.winner]
        else:
            best = versions["default"]
        install(mod, task, best)
    return mod, races, len(tasks)


def install(mod: tvm.IRModule, task: Task, func: tirx.PrimFunc) -> None:
    """Put ``func`` (a scheduled version of ``task``'s kernel) in place of every function of ``mod`` that is
    that kernel, marked scheduled so the default rules leave it alone."""
    for gvar in task.gvars:  # the normalized kernel is named "main": take back the module's attributes
        mod[gvar] = func.without_attr("global_symbol").with_attrs({**mod[gvar].attrs, SCHEDULED: True})
