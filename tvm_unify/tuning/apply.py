"""Tuning records at compile time: the unified layers and the planar convs get their accepted knobs
(``RecordChooser``, the ``choose`` hooks of ``LowerUnifiedBlocks`` and ``LowerPlanarConv2d``), the dense
kernels whose tune-time race the tuned schedule won get that schedule from the database
(``install_dense``); everything else keeps its default. Nothing is timed here: the decisions were made
when tuning."""

from __future__ import annotations

import tvm

from ..kernels import KernelOptions
from ..kernels.planar import PlanarConv
from ..kernels.unified import UnifiedLayer
from ..schedule import is_scheduled
from .keep_better import install
from .records import Records, workload_hash
from .space import options_for
from .tasks import kernel_tasks


class RecordChooser:
    """Options per unified layer from ``records``: the decision of its workload, else (another model's
    layer of the same shapes: knobs depend on the shapes far more than on which blocks survived) the
    best decision among workloads of the same shape; knobs per planar conv (``planar``). ``used`` says
    per layer or planar kernel ``tuned``, ``tuned (shape)`` or ``default``."""

    def __init__(self, records: Records) -> None:
        self.records = records
        self.used: dict[str, str] = {}
        self.by_shape: dict[str, dict] = {}
        for entry in records.unified.values():
            decision, shape = entry.get("decision"), entry.get("shape_key")
            known = self.by_shape.get(shape)
            if decision and shape and (known is None or _gain(decision) > _gain(known)):
                self.by_shape[shape] = decision

    def __call__(self, layer: UnifiedLayer) -> KernelOptions:
        decision = self.records.unified.get(layer.key, {}).get("decision")
        self.used[layer.name] = "tuned" if decision else "default"
        if layer.key not in self.records.unified and layer.shape_key in self.by_shape:
            decision = self.by_shape[layer.shape_key]
            self.used[layer.name] = "tuned (shape)"
        return options_for(layer, decision["knobs"]) if decision else layer.options

    def planar(self, conv: PlanarConv) -> PlanarConv:
        """``conv`` with its workload's decided knobs, if any."""
        decision = self.records.unified.get(conv.key, {}).get("decision")
        self.used[f"planar {conv.describe()}"] = "tuned" if decision else "default"
        return conv.with_knobs(**decision["knobs"]) if decision else conv


def _gain(decision: dict) -> float:
    return decision["default"] / decision["cost"]


def install_dense(mod: tvm.IRModule, records: Records, target: tvm.target.Target) -> dict[str, str]:
    """Install, in place, the tuned schedule of every unscheduled kernel of the prepared ``mod`` whose
    recorded decision is ``tuned``; returns ``tuned`` or ``default`` per kernel name."""
    tasks = [task for task in kernel_tasks(mod) if not is_scheduled(mod[task.gvars[0]])]
    tuned = {key for key in map(workload_hash, (task.mod for task in tasks))
             if records.decisions.get(key, {}).get("keep") == "tuned"}
    database = records.tuned_database(tuned) if tuned else None
    used: dict[str, str] = {}
    for task in tasks:
        record = database.query_schedule(task.mod, target, "main") if database is not None else None
        if record is not None:
            install(mod, task, record.mod["main"])
        used[task.name] = "default" if record is None else "tuned"
    return used
