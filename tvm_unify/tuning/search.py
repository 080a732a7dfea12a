"""Template search over the knobs of the hand-written kernels, guided by an XGBoost cost model.

Why our own search and not meta-schedule: a unified kernel is a hand-written template whose speed
comes from its algorithm and tiling choices (``tuning/space.py``), not from loop transformations
meta-schedule could sample, and its candidates are few (tens per layer), so measuring the right ones
matters more than proposing new ones. A planar conv kernel (``tuning/planar_space.py``) is searched
the same way. Per workload (``Template.key``), heaviest first:

1. measure the untuned kernel (the cost to beat and the reference output);
2. in batches of ``BATCH``: rank the unmeasured candidates with the cost model, measure the predicted
   best (plus one random pick per batch, so a wrong model still explores), check each output against
   the untuned kernel's (a candidate that disagrees is rejected and recorded with the error), and
   retrain the model on every measured candidate of every workload;
3. accept the best candidate only if it beats the untuned kernel by ``MARGIN`` (the local runner
   first re-races the two, alternating rounds, against the load of other processes on the host).

The cost model is ``xgboost.XGBRegressor`` on ``Template.features`` (layer shape + knobs) predicting
``log(default cost / cost)``, the speed-up over the layer's own default, so what one layer teaches
transfers to the next (one model per kind of template: their features differ); until it has
``MIN_TRAIN`` samples the picks are random. Every measured batch
is saved (``Records.save_unified``), so a killed run resumes where it stopped.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import tvm

from ..errors import UserError
from ..kernels.neon import CpuFeatures
from .records import Records
from .runners import LocalRunner, MeasureTimeout, Runner, kernel_model
from .space import Knobs

BATCH = 4
MIN_TRAIN = 8
MARGIN = 0.03  # a candidate must be this much faster than the default to be kept
RACE_ROUNDS = 3
MAX_HUNG = 2  # a device that misses this many deadlines in a row stops the run
SEED = 0


class Template(Protocol):
    """A hand-written kernel whose knobs the search tunes (``space.UnifiedTemplate``,
    ``planar_space.PlanarTemplate``): a workload ``key`` (and ``shape_key``, the workload without what
    does not change the kernel's speed), the table's ``name`` and ``describe()``, its ``calls`` per
    inference and their ``cost`` (FLOPs, what the trial budget is split by), and its knob space."""

    kind: str  # templates of one kind share a cost model
    key: str
    shape_key: str
    name: str
    op: str
    tolerance: float  # max abs difference from the default's output, relative to its largest value
    calls: int
    cost: float

    def describe(self) -> str: ...

    def x_shape(self) -> tuple[int, ...]: ...

    def default_knobs(self) -> Knobs: ...

    def candidates(self, cpu: CpuFeatures, parallel: bool) -> list[Knobs]: ...

    def features(self, knobs: Knobs) -> list[float]: ...

    def kernel(self, knobs: Knobs) -> tuple[tvm.tirx.PrimFunc, tuple[np.ndarray, ...]]: ...


class CostModel:
    """XGBoost regression of ``log(default / cost)`` on candidate features, retrained after each batch."""

    def __init__(self) -> None:
        self.x: list[list[float]] = []
        self.y: list[float] = []
        self.model = None

    def add(self, feature: list[float], speedup: float) -> None:
        self.x.append(feature)
        self.y.append(math.log(speedup))

    def fit(self) -> None:
        if len(self.y) < MIN_TRAIN:
            return
        import xgboost

        self.model = xgboost.XGBRegressor(n_estimators=60, max_depth=4, learning_rate=0.2, subsample=0.9,
                                          random_state=SEED, n_jobs=1)
        self.model.fit(np.asarray(self.x), np.asarray(self.y))

    def predict(self, rows: list[list[float]], rng: random.Random) -> list[float]:
        """Predicted log speed-ups (random scores while untrained)."""
        if self.model is None:
            return [rng.random() for _ in rows]
        return [float(v) for v in self.model.predict(np.asarray(rows))]


@dataclass
class Outcome:
    """One workload's result for the tune table."""

    template: Template
    trials: int
    default: float
    best: float
    tuned: bool


class TemplateSearch:
    """Tunes template workloads into ``records`` with ``runner`` for ``target`` (``features``: the
    target's CPU features, for the algorithms it has)."""

    def __init__(self, records: Records, runner: Runner, target: tvm.target.Target, features: CpuFeatures,
                 log: Callable[[str], None] = print, progress: Callable[[int], None] = lambda n: None) -> None:
        self.records, self.runner, self.target, self.features = records, runner, target, features
        self.log, self.progress = log, progress
        self.models: dict[str, CostModel] = {}
        self.rng = random.Random(SEED)
        self.hung = 0  # measurements in a row that hit the runner's deadline

    def build(self, template: Template, knobs: Knobs) -> tvm.runtime.Executable:
        func, arrays = template.kernel(knobs)
        return tvm.compile(kernel_model(func, arrays), target=self.target)

    def tune(self, template: Template, trials: int, deadline: float = math.inf) -> Outcome:
        """Measure up to ``trials`` candidates of ``template`` in total (counting earlier runs), starting
        no batch after ``deadline`` (``time.perf_counter``)."""
        entry = self.records.unified.setdefault(template.key, {"layer": template.name, "op": template.op,
                                                               "shape": template.describe(), "trials": []})
        if entry.get("unit", self.runner.unit) != self.runner.unit:
            entry["trials"] = []  # another runner's costs do not compare
        entry.update(unit=self.runner.unit, runner=self.runner.label, shape_key=template.shape_key)
        x = np.random.default_rng(SEED).standard_normal(template.x_shape()).astype("float32")
        default_knobs = template.default_knobs()
        reference = self.runner.measure(self.build(template, default_knobs), x)
        entry["default"] = reference.cost
        model = self.models.setdefault(template.kind, CostModel())
        for trial in entry["trials"]:  # what an earlier run measured trains the model too
            if trial.get("cost"):
                model.add(template.features(trial["knobs"]), entry["default"] / trial["cost"])
        measured = [t["knobs"] for t in entry["trials"]]
        pool = [k for k in template.candidates(self.features, self.runner.parallel)
                if k != default_knobs and k not in measured]
        while len(entry["trials"]) < trials and pool and time.perf_counter() < deadline:
            model.fit()
            for knobs in self._pick(template, pool, min(BATCH, trials - len(entry["trials"]))):
                pool.remove(knobs)
                entry["trials"].append(self._trial(template, knobs, x, reference.output, entry["default"]))
                self.progress(1)
            self.records.save_unified()
        return self._decide(template, entry, default_knobs, x)

    def _pick(self, template: Template, pool: list[Knobs], count: int) -> list[Knobs]:
        """The ``count - 1`` best-predicted candidates and one random one (all random while untrained)."""
        scores = self.models[template.kind].predict([template.features(k) for k in pool], self.rng)
        ranked = [pool[i] for i in np.argsort(scores)[::-1]]
        picks = ranked[: max(count - 1, 1)]
        rest = [k for k in pool if k not in picks]
        if count > 1 and rest:
            picks.append(self.rng.choice(rest))
        return picks

    def _trial(self, template: Template, knobs: Knobs, x: np.ndarray, reference: np.ndarray, default: float) -> dict:
        """Build, measure and check one candidate; the record says its cost or why it was rejected."""
        try:
            measured = self.runner.measure(self.build(template, knobs), x)
            self.hung = 0
        except MeasureTimeout as err:
            self.hung += 1
            if self.hung >= MAX_HUNG:
                self.records.save_unified()
                raise UserError(f"{err}, {self.hung} times in a row: stopping (what was measured is saved; "
                                "run again to resume)") from None
            self.log(f"    {template.name}: candidate {knobs} failed: {err}")
            return {"knobs": knobs, "cost": None, "error": str(err)}
        except Exception as err:  # noqa: BLE001 - a failing candidate is recorded, tuning goes on
            message = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            self.log(f"    {template.name}: candidate {knobs} failed: {message[:200]}")
            return {"knobs": knobs, "cost": None, "error": message[:200]}
        error = float(np.abs(measured.output - reference).max() / max(np.abs(reference).max(), 1e-30))
        if error > template.tolerance:
            return {"knobs": knobs, "cost": None, "error": f"output differs from the default kernel's by {error:.1e}"}
        self.models[template.kind].add(template.features(knobs), default / measured.cost)
        return {"knobs": knobs, "cost": measured.cost}

    def _decide(self, template: Template, entry: dict, default_knobs: Knobs, x: np.ndarray) -> Outcome:
        """Keep the best checked candidate if it beats the default by ``MARGIN`` (re-raced locally)."""
        valid = [t for t in entry["trials"] if t.get("cost")]
        best = min(valid, key=lambda t: t["cost"], default=None)
        default, best_cost = entry["default"], best["cost"] if best else math.inf
        if best is not None and isinstance(self.runner, LocalRunner) and best_cost < default:
            default, best_cost = self.race(template, default_knobs, best["knobs"], x)
        tuned = best_cost < (1 - MARGIN) * default
        entry["decision"] = {"knobs": best["knobs"], "cost": best_cost, "default": default} if tuned else None
        self.records.save_unified()
        return Outcome(template, len(entry["trials"]), default, min(best_cost, default), tuned)

    def race(self, template: Template, default_knobs: Knobs, best_knobs: Knobs, x: np.ndarray) -> tuple[float, float]:
        """Minimum over ``RACE_ROUNDS`` alternating rounds of the default and the best candidate."""
        builds = [self.build(template, default_knobs), self.build(template, best_knobs)]
        costs = [math.inf, math.inf]
        for _ in range(RACE_ROUNDS):
            for i, executable in enumerate(builds):
                costs[i] = min(costs[i], self.runner.measure(executable, x).cost)
        return costs[0], costs[1]
