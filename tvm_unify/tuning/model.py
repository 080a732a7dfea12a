"""The ``tune`` verb: every kernel of a compiled model, unified, planar and dense, tuned into the records
folder of its target, with the decisions ``compile`` then applies without timing anything.

- Tasks: the unified layers as ``LowerUnifiedBlocks`` generates them for the target (one workload per
  layer: the block pattern is part of the key), the planar convs as ``LowerPlanarConv2d`` generates them
  (one workload per geometry), and the dense kernels of the prepared module that carry at least
  ``MIN_FLOP_SHARE`` of its FLOPs. The trial budget is split over all of them by FLOPs x
  occurrences (``budget.allocate``); ``time_budget`` instead stops starting new batches/tasks when it
  runs out. Both searches commit every measured batch, so a killed run resumes from its records.
- Unified and planar kernels: the knob search (``search.py``) with the given runner: this machine, a
  device over RPC, or instruction counts on the emulated device.
- Dense kernels: meta-schedule (evolutionary search, XGBoost) and then keep-the-better, recorded per
  kernel (``records.py``), both measured with the same runner: meta-schedule's own pools here, or
  ``ms_device``'s builder and runner, which measure on the device (or count its instructions).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import tvm

from ..compiler import lower_unified
from ..errors import UserError
from ..frontend import import_torchscript
from ..kernels import cpu_features
from ..kernels.planar import PlanarConv
from ..kernels.unified import UnifiedLayer
from ..pipeline import codegen_target, prepare_passes
from ..schedule import is_scheduled
from ..targets import TargetPreset
from .budget import TRIALS_PER_ITER, allocate
from .keep_better import keep_better
from .records import DENSE_DIR, Records
from .runners import RemoteRunner, Runner
from .planar_space import PlanarTemplate
from .search import Template, TemplateSearch
from .space import UnifiedTemplate
from .tasks import Task, kernel_tasks, tunable
from .tune import tune_tasks_resumable
from .units import from_seconds

TRIALS_PER_TASK_UNBOUNDED = 64  # with only a time budget: trials per task the run aims at
KERNELS = ("all", "unified", "planar", "dense")


@dataclass
class TaskRow:
    """One line of the tune table: a unified layer, a planar conv or a dense kernel, its work, trials and
    costs (in ``unit``; None where nothing was measured) and whether the tuned version is kept."""

    kind: str
    name: str
    flops: float
    trials: int
    default: float | None = None
    best: float | None = None
    tuned: bool = False
    unit: str = "s"

    @property
    def speedup(self) -> float | None:
        return self.default / self.best if self.default and self.best else None


def unified_templates(imported, mode: str, preset: TargetPreset, target: tvm.target.Target
                      ) -> tuple[tvm.IRModule, list[UnifiedTemplate]]:
    """The lowered module and its unified layers (distinct workloads), with their untuned options."""
    layers: dict[str, UnifiedLayer] = {}

    def collect(layer: UnifiedLayer):
        layers.setdefault(layer.key, layer)
        return layer.options

    mod, _ = lower_unified(imported, mode, tasks=preset.cores, target=target, choose=collect)
    return mod, [UnifiedTemplate(layer) for layer in layers.values()]


def prepared_kernels(mod: tvm.IRModule, target: tvm.target.Target
                     ) -> tuple[tvm.IRModule, list[Task], list[PlanarTemplate]]:
    """The prepared module, its unscheduled kernels worth tuning (the unified and planar ones are
    scheduled) and its planar convs (distinct workloads, with their untuned knobs and call counts)."""
    planar: dict[PlanarConv, int] = {}

    def collect(conv: PlanarConv) -> PlanarConv:
        planar[conv] = planar.get(conv, 0) + 1
        return conv

    with target:
        prepared = tvm.transform.Sequential(prepare_passes(planar=collect))(mod)
    tasks = [t for t in kernel_tasks(prepared) if not is_scheduled(prepared[t.gvars[0]])]
    return prepared, tunable(tasks), [PlanarTemplate(conv, calls) for conv, calls in planar.items()]


def tune_model(model: str | os.PathLike, preset: TargetPreset, directory: Path, runner: Runner,
               trials: int | None = None, time_budget: float | None = None, mode: str = "fp32",
               dense: bool = False, threads: int = 2, log: Callable[[str], None] = print,
               progress: Callable[[int, int], None] = lambda done, total: None, kernels: str = "all"
               ) -> list[TaskRow]:
    """Tune ``model``'s kernels (``kernels``: all, or the unified, planar or dense ones) for ``preset`` into
    the records in ``directory`` (the target's folder) with ``trials`` trials in all, or for ``time_budget``
    seconds; returns the table rows."""
    if trials is None and time_budget is None:
        raise UserError("give --trials N or --time-budget SECONDS")
    records = Records(directory)  # parses what is there first: a corrupt file stops the run before any write
    if kernels not in KERNELS:
        raise UserError(f"unknown kernel kind {kernels!r} (choose from {', '.join(KERNELS)})")
    if kernels in ("all", "dense"):
        records.dense_database()
    deadline = math.inf if time_budget is None else time.perf_counter() + time_budget
    target = codegen_target(preset)
    imported = import_torchscript(model)
    mod, unified = (imported.mod, []) if dense else unified_templates(imported, mode, preset, target)
    prepared, tasks, planar = (mod, [], []) if kernels == "unified" else prepared_kernels(mod, target)
    chosen = {"all": [*unified, *planar, *tasks], "unified": unified, "planar": planar, "dense": tasks}[kernels]
    work = sorted([(item.cost, item) for item in chosen], key=lambda pair: -pair[0])
    if not work:
        raise UserError(f"{model} has no {'' if kernels == 'all' else kernels + ' '}kernel to tune for {preset.name}")
    total = trials if trials is not None else TRIALS_PER_TASK_UNBOUNDED * len(work)
    budget = allocate([cost for cost, _ in work], total, min(total, TRIALS_PER_ITER))
    done = 0

    def step(count: int) -> None:
        nonlocal done
        done += count
        progress(done, sum(budget))

    search = TemplateSearch(records, runner, target, cpu_features(target), log, lambda n: step(n))
    rows: list[TaskRow] = []
    for (cost, item), n in zip(work, budget):
        if not isinstance(item, Task):
            rows.append(_tune_template(search, item, cost, n, deadline, runner.unit))
    dense_budget = [(item, n) for (cost, item), n in zip(work, budget) if isinstance(item, Task)]
    if dense_budget:
        rows += _tune_dense(prepared, dense_budget, records, target, threads, deadline, log, step, runner)
    return rows


def _tune_template(search: TemplateSearch, template: Template, cost: float, trials: int, deadline: float,
                   unit: str) -> TaskRow:
    """The knob search on one unified layer or planar conv (nothing if its budget or the time is out)."""
    kind = "planar" if isinstance(template, PlanarTemplate) else "unified"
    name = f"{template.name} ({template.describe()})"
    if not trials or time.perf_counter() >= deadline:
        return TaskRow(kind, name, cost, 0, unit=unit)
    out = search.tune(template, trials, deadline)
    return TaskRow(kind, name, cost, out.trials, out.default, out.best, out.tuned, unit)


def _tune_dense(prepared: tvm.IRModule, budget: list[tuple[Task, int]], records: Records,
                target: tvm.target.Target, threads: int, deadline: float, log: Callable[[str], None],
                step: Callable[[int], None], runner: Runner) -> list[TaskRow]:
    """Meta-schedule on the dense kernels while time lasts, then keep-the-better, recorded per kernel, both
    measured by ``runner``. Meta-schedule's parallelization rules need the target's core count:
    ``threads``, where it has none."""
    target = tvm.target.Target({"num-cores": threads, **target.export()})
    device = runner if isinstance(runner, RemoteRunner) else None
    if time.perf_counter() < deadline:
        tune_tasks_resumable([t for t, _ in budget], [n for _, n in budget], records.dir / DENSE_DIR, target, threads,
                             log=log, device=device, deadline=deadline)
    step(sum(n for _, n in budget))
    database = records.dense_database()
    _, races, _ = keep_better(prepared, database, target, log=log, device=device)
    for race in races:
        records.decisions[race.workload] = {"kernel": race.task, "default": race.default, "tuned": race.tuned,
                                            "keep": race.winner, "agrees": race.agrees, "runner": runner.label}
    records.save_decisions()
    by_name = {race.task: race for race in races}
    rows = []
    for task, n in budget:
        race = by_name.get(task.name)
        rows.append(TaskRow("dense", task.name, task.cost, n, race and from_seconds(race.default, runner.unit),
                            race and from_seconds(race.tuned, runner.unit), bool(race) and race.winner == "tuned",
                            runner.unit))
    return rows
