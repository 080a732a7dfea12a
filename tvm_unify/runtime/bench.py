"""``tvm-unify bench``: models x devices over RPC, one comparison table, JSON, markdown and a PNG chart.

Each (library, device) pair is uploaded, checked against a reference output when one is given, timed
with the device's ``time_evaluator`` and, on the emulated device, optionally counted in instructions.
The first library is the baseline the others are compared with (put the dense build first).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import UserError
from ..fileio import atomic_output
from .rpc import (DeviceSpec, Session, Timing, count_remote, device_info, load_remote, probe_input,
                  run_remote, time_remote, time_vm, with_device)
from .local import library_arch, load_local
from .reference import compare

EMULATED_NOTE = ("Timings from the emulated device (qemu user mode) are NOT ARM timings: qemu's speed does "
                 "not track real ARM cores. Compare builds there by instruction counts, or on a real board.")


@dataclass(frozen=True)
class BenchOptions:
    """How to measure: warm-up calls, timed rounds (``repeat`` x ``number`` calls), counting, checking."""

    warmup: int = 1
    repeat: int = 10
    number: int = 1
    count: bool = False
    rtol: float = 1e-4
    retries: int = 1


@dataclass
class BenchResult:
    """One library on one device."""

    library: str
    device: str
    arch: str
    emulated: bool
    input_shape: list[int]
    timing: Timing
    instructions: int | None = None
    instructions_total: int | None = None
    max_abs_err: float | None = None
    within_tolerance: bool | None = None
    info: dict = field(default_factory=dict)


def bench_one(spec: DeviceSpec, library: Path, inputs: list[np.ndarray] | None, reference: np.ndarray | None,
              options: BenchOptions, log: Callable[[str], None] = print) -> BenchResult:
    """Measure ``library`` on the device ``spec`` (retrying on another tracker device if one is lost)."""

    def job(session: Session) -> BenchResult:
        info = device_info(session)
        model = load_remote(session, library)
        arrays = inputs or [random_input(*probe_input(model.vm, model.device, library.name))]
        result = BenchResult(library.name, session.device, library_arch(library), bool(info.get("emulated")),
                             list(arrays[0].shape), time_remote(model, arrays, options.warmup, options.repeat,
                                                                options.number), info=info)
        if reference is not None:
            _check(result, run_remote(model, arrays), reference, options.rtol)
        if options.count:
            counts = count_remote(model, arrays)
            result.instructions, result.instructions_total = counts["kernels"], counts["total"]
        return result

    return with_device(spec, job, retries=options.retries, log=log)


def bench_local(library: Path, inputs: list[np.ndarray] | None, reference: np.ndarray | None,
                options: BenchOptions) -> BenchResult:
    """The same measurement for a host-architecture library on this machine (no RPC), for comparison."""
    import tvm

    vm, dev = load_local(library), tvm.cpu()
    arrays = inputs or [random_input(*probe_input(vm, dev, library.name))]
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in arrays]
    result = BenchResult(library.name, "this host (local)", library_arch(library), False, list(arrays[0].shape),
                         time_vm(vm, dev, args, options.warmup, options.repeat, options.number))
    if reference is not None:
        _check(result, vm["main"](*args).numpy(), reference, options.rtol)
    return result


def _check(result: BenchResult, output: np.ndarray, reference: np.ndarray, rtol: float) -> None:
    """Record the max abs error to the reference and whether it is within ``rtol`` of its scale."""
    agreement = compare(output, reference, rtol, f"{result.library} on {result.device}")
    result.max_abs_err, result.within_tolerance = agreement.max_abs_err, agreement.ok


def random_input(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """A fixed-seed standard-normal input when the user gives none (timing does not depend on values)."""
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


def run_bench(libraries: list[Path], specs: list[DeviceSpec], inputs: list[np.ndarray] | None = None,
              reference: np.ndarray | None = None, options: BenchOptions = BenchOptions(),
              log: Callable[[str], None] = print, local: bool = False) -> list[BenchResult]:
    """Every library on this host (with ``local``) and on every device, devices outer, libraries inner."""
    if not libraries or not (specs or local):
        raise UserError("bench needs at least one library and a place to run it (--local, --rpc or "
                        "--tracker/--key)")
    results = []
    if local:
        for library in libraries:
            log(f"[bench] {library.name} on this host")
            results.append(bench_local(library, inputs, reference, options))
    for spec in specs:
        for library in libraries:
            log(f"[bench] {library.name} on {spec.label}")
            results.append(bench_one(spec, library, inputs, reference, options, log))
    return results


def speedups(results: list[BenchResult]) -> list[float]:
    """Each result's baseline median / its median, the baseline being the first library on its device."""
    baseline: dict[str, float] = {}
    for r in results:
        baseline.setdefault(r.device, r.timing.median_ms)
    return [baseline[r.device] / r.timing.median_ms for r in results]


def format_table(results: list[BenchResult]) -> str:
    """A plain-text comparison table (the CLI prints it; the markdown report uses the same rows)."""
    rows = _rows(results)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                               enumerate(zip(row, widths))) for row in rows)


def _rows(results: list[BenchResult]) -> list[list[str]]:
    header = ["library", "device", "arch", "median ms", "p90 ms", "std ms", "vs first", "instructions",
              "max abs err"]
    rows = [header]
    for r, speedup in zip(results, speedups(results)):
        err = "-" if r.max_abs_err is None else f"{r.max_abs_err:.2e}" + ("" if r.within_tolerance else " FAIL")
        device = r.device + (" (emulated)" if r.emulated else "")
        rows.append([r.library, device, r.arch, f"{r.timing.median_ms:.3f}", f"{r.timing.p90_ms:.3f}",
                     f"{r.timing.std_ms:.3f}", f"{speedup:.2f}x",
                     "-" if r.instructions is None else f"{r.instructions:,}", err])
    return rows


def write_json(results: list[BenchResult], path: str | Path) -> None:
    """All measurements, machine-readable, atomically."""
    payload = {"results": [asdict(r) | {"speedup_vs_first": s} for r, s in zip(results, speedups(results))],
               "note": EMULATED_NOTE if any(r.emulated for r in results) else ""}
    with atomic_output(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(payload, indent=1) + "\n")


def write_markdown(results: list[BenchResult], path: str | Path, title: str = "Benchmark") -> Path:
    """A markdown report with the table and a PNG bar chart beside it (same name, .png); returns the PNG."""
    md_path = Path(path)
    png_path = md_path.with_suffix(".png")
    write_chart(results, png_path)
    rows = _rows(results)
    lines = [f"# {title}", "",
             "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    lines += ["", f"Timing: device-side `time_evaluator`, {results[0].timing.repeat} rounds of "
                  f"{results[0].timing.number} call(s) after warm-up; `vs first` = median of the first "
                  "library on the same device / this median."]
    if any(r.instructions is not None for r in results):
        lines.append("Instructions: dynamic aarch64 instructions executed in the compiled library's code "
                     "during one call, counted by a qemu plugin between markers around the call (exact "
                     "across runs; the JSON also has the total with the runtime, which drifts ~0.01%).")
    if any(r.emulated for r in results):
        lines += ["", f"**{EMULATED_NOTE}**"]
    lines += ["", f"![chart]({png_path.name})", ""]
    with atomic_output(md_path, suffix=".md") as tmp:
        tmp.write_text("\n".join(lines))
    return png_path


def write_chart(results: list[BenchResult], path: Path) -> None:
    """Grouped bars per library, one bar per device: median latency (and instructions when counted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    libraries = list(dict.fromkeys(r.library for r in results))
    devices = list(dict.fromkeys(r.device for r in results))
    panels = [("median latency per call (ms)", lambda r: r.timing.median_ms)]
    if any(r.instructions is not None for r in results):
        panels.append(("aarch64 instructions per call (kernels)", lambda r: r.instructions or 0))
    fig, axes = plt.subplots(1, len(panels), figsize=(1 + (4 + 1.2 * len(libraries)) * len(panels), 4.8),
                             squeeze=False)
    width = 0.8 / len(devices)
    for ax, (label, value) in zip(axes[0], panels):
        for d, device in enumerate(devices):
            heights = [next((value(r) for r in results if r.library == lib and r.device == device), 0)
                       for lib in libraries]
            ax.bar(np.arange(len(libraries)) + d * width, heights, width, label=device)
        ax.set_xticks(np.arange(len(libraries)) + width * (len(devices) - 1) / 2, libraries, rotation=15,
                      fontsize="small")
        ax.set_title(label, fontsize="medium")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(devices), 3), fontsize="small")
    footer = "first library = baseline"
    if any(r.emulated for r in results):
        footer += "; emulated device (qemu): latency is NOT ARM speed, compare instruction counts"
    fig.suptitle(footer, fontsize="small")
    fig.tight_layout(rect=(0, 0.1 + 0.04 * ((len(devices) - 1) // 3), 1, 0.95))
    with atomic_output(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def failed_checks(results: list[BenchResult]) -> list[BenchResult]:
    """Results whose output disagreed with the reference."""
    return [r for r in results if r.within_tolerance is False]
