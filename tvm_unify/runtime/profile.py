"""Where the time of one inference goes: every call the Relax VM makes (each kernel, each runtime
builtin) timed through the VM's instrumentation hook, summed per function over a run, median over
runs. The hook costs about a microsecond per call, so the sum is a little above the plain latency."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from tvm import relax


@dataclass(frozen=True)
class KernelTime:
    """One function the VM calls: calls per inference and milliseconds per inference (median over runs)."""

    name: str
    calls: int
    ms: float


def kernel_breakdown(vm: relax.VirtualMachine, args: list, runs: int = 10) -> list[KernelTime]:
    """Per-function time of ``vm["main"](*args)``, slowest first."""
    per_run: list[dict[str, float]] = []
    calls: dict[str, int] = defaultdict(int)
    started: list[float] = []
    current: dict[str, float] = defaultdict(float)

    def instrument(_func, symbol, before_run, _ret, *_args):
        now = time.perf_counter()
        if before_run:
            started.append(now)
        else:
            current[str(symbol)] += now - started.pop()
            if len(per_run) == 0:
                calls[str(symbol)] += 1
        return 0  # VMInstrumentReturnKind.NO_OP: run the call as usual

    vm["main"](*args)  # warm up before instrumenting
    vm.set_instrument(instrument)
    try:
        for _ in range(runs):
            current.clear()
            vm["main"](*args)
            per_run.append(dict(current))
    finally:
        vm.set_instrument(None)
    names = per_run[0].keys()
    times = [KernelTime(n, calls[n], float(np.median([run.get(n, 0.0) for run in per_run])) * 1e3) for n in names]
    return sorted(times, key=lambda k: -k.ms)


def format_breakdown(times: list[KernelTime], top: int = 25) -> str:
    """The slowest ``top`` functions with their share of the summed time."""
    total = sum(k.ms for k in times) or 1.0
    lines = [f"{'function':48s} {'calls':>5s} {'ms':>9s} {'share':>6s}"]
    lines += [f"{k.name[:48]:48s} {k.calls:5d} {k.ms:9.3f} {k.ms / total:6.1%}" for k in times[:top]]
    rest = times[top:]
    if rest:
        lines.append(f"{f'({len(rest)} more)':48s} {sum(k.calls for k in rest):5d} {sum(k.ms for k in rest):9.3f} "
                     f"{sum(k.ms for k in rest) / total:6.1%}")
    lines.append(f"{'total':48s} {sum(k.calls for k in times):5d} {total:9.3f}")
    return "\n".join(lines)
