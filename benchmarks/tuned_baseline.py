"""Unified kernels vs the strongest dense TVM build we can reach: meta-schedule tuning, keep the better.

The issue asks for unified (0 tuning trials: the unified builds are untuned on purpose) vs "dense TVM
tuned with the same budget". A fair dense baseline is the best dense build TVM can give, so tuning is
split from measuring and the tuned build keeps, kernel by kernel, whichever schedule is faster:

- ``--tune``: meta-schedule (evolutionary search, XGBoost cost model) on the fused kernels of the
  prepared dense model (``prepare_passes``: HWIO kernels, BN folded, fused) that carry at least
  ``MIN_FLOP_SHARE`` of its FLOPs. The ``--trials`` budget is split over them in proportion to FLOPs x
  occurrences, at least one iteration each while it lasts, heaviest first (FLOPs, not measured times:
  on this shared host a time profile measures the neighbours' load as much as the kernels). Records go
  to a persistent JSON database, ``benchmarks/tuning/<model>-dense/``, committed after every measured
  batch, so a killed run keeps what it measured and a re-run only tunes what is missing.
- ``--measure`` (the default): for ResNet-18 and MobileNetV2 (32x32, batch 1, BatchNorm-calibrated,
  4x4 unified weights at 75% sparsity) build and time, interleaved, with the same thread count:
  PyTorch eager, ONNX Runtime (when installed: ``pip install -e .[bench]``), ``dense stock`` (plain
  ``tvm.compile``, optional), ``dense default`` (the project's hand-written default schedules),
  ``dense tuned`` (per kernel the faster of the best database record and the default schedule, each
  timed alone on random inputs), ``unified fp32``, ``unified fp32 + tuned rest`` (the same
  keep-the-better on the unified model's remaining dense kernels, same database) and ``unified int8``.
  Every build is checked against PyTorch (max relative error).

    python benchmarks/tuned_baseline.py --tune --models resnet18 --trials 160
    python benchmarks/tuned_baseline.py --tune --models mobilenetv2 --trials 144
    python benchmarks/tuned_baseline.py [--measure] [--models ...] [--rounds 5] [--skip-stock]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import tvm

try:  # optional peer (the bench extra): the comparison notes its absence
    import onnxruntime as ort
except ImportError:
    ort = None
from torch import nn
from tvm import relax

from tvm_unify.compiler import lower_unified
from tvm_unify.models import get_builtin
from tvm_unify.models.calibration import calibrate_batchnorm
from tvm_unify.pipeline import build, codegen_target, prepare_passes
from tvm_unify.schedule import ApplyDefaultSchedules
from tvm_unify.targets import load_target
from tvm_unify.testing import import_model, torch_seconds, unify_model
from tvm_unify.tuning import (MIN_FLOP_SHARE, TRIALS_PER_ITER, Race, allocate, keep_better, kernel_tasks,
                              open_database, tunable, tune_tasks_resumable)
from tvm_unify.tuning.keep_better import RACE_MIN_REPEAT_MS, RACE_REPEATS, RACE_ROUNDS
from tvm_unify.tuning.tune import STATE_FILE
from machine import cpu_name

ROOT = Path(__file__).resolve().parent.parent
BLOCK = (4, 4)
IDLE = 0.2  # seconds between timed rounds: TVM's pool threads spin for a while after a run
SPARSITY = 0.75
MODELS = ("resnet18", "mobilenetv2")
TUNING_ROOT = ROOT / "benchmarks" / "tuning"
SAMPLES = 20  # single calls per round and variant
SLOW_SAMPLES = 3  # for builds slower than SLOW_SECONDS per call (the stock build)
SLOW_SECONDS = 0.02
VARIANTS = ["PyTorch", "ONNX Runtime", "dense stock", "dense default", "dense tuned", "unified fp32",
            "unified fp32 + tuned rest", "unified int8"]


@dataclass
class Variant:
    """One TVM executable of a model (``source``: which PyTorch model it computes), callable on a fixed
    input; collects per-call times."""

    executable: tvm.runtime.Executable
    x: np.ndarray
    source: str
    samples: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.vm = relax.VirtualMachine(self.executable, tvm.cpu())
        self.input = tvm.runtime.tensor(self.x)

    def output(self) -> np.ndarray:
        return self.vm["main"](self.input).numpy()

    def measure(self, samples: int) -> None:
        """Append ``samples`` single-call times (seconds)."""
        evaluator = self.vm.time_evaluator("main", tvm.cpu(), number=1, repeat=samples)
        self.samples += list(evaluator(self.input).results)


@dataclass
class OrtVariant:
    """The model exported to ONNX (torch.onnx, dynamo exporter) and run by ONNX Runtime's CPU provider
    with ``threads`` intra-op threads: the same interface as ``Variant``."""

    path: Path
    x: np.ndarray
    source: str
    threads: int
    samples: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.feed = {self.session.get_inputs()[0].name: self.x}

    def output(self) -> np.ndarray:
        return self.session.run(None, self.feed)[0]

    def measure(self, samples: int) -> None:
        for _ in range(samples):
            start = time.perf_counter()
            self.session.run(None, self.feed)
            self.samples.append(time.perf_counter() - start)


def export_onnx(model: nn.Module, x: np.ndarray, path: Path) -> Path:
    torch.onnx.export(model, (torch.from_numpy(x),), dynamo=True, verbose=False).save(str(path))
    return path


@dataclass
class ModelResult:
    """Everything the report says about one model."""

    name: str
    times: dict[str, tuple[float, float]] = field(default_factory=dict)  # variant -> (min, median) seconds
    errors: dict[str, float] = field(default_factory=dict)  # variant -> max rel err vs PyTorch
    kernels: int = 0  # distinct kernels of the prepared dense module
    races: list[Race] = field(default_factory=list)  # those with a database record
    unified_races: list[Race] = field(default_factory=list)  # the unified model's dense rest, same database
    tuning: dict = field(default_factory=dict)  # the tuning state file, plus the database's record count
    failures: dict[str, str] = field(default_factory=dict)


def make_models(name: str) -> tuple[nn.Module, nn.Module, tuple[int, ...]]:
    """The BN-calibrated dense model and its unified twin (re-calibrated after projection)."""
    builtin = get_builtin(name)
    dense = calibrate_batchnorm(builtin.factory(), builtin.input_shape)
    unified = calibrate_batchnorm(builtin.factory(), builtin.input_shape)
    unify_model(unified, BLOCK, SPARSITY)
    unified = calibrate_batchnorm(unified, builtin.input_shape)
    return dense.eval(), unified.eval(), builtin.input_shape


def host_target(threads: int) -> tvm.target.Target:
    """The host codegen target (this CPU's features) with ``num-cores`` set, which meta-schedule needs."""
    target = codegen_target(load_target("host"))
    return tvm.target.Target({**target.export(), "num-cores": threads})


def prepare(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """The project's graph preparation (layout, BN decomposition, legalize, fuse), before scheduling."""
    with target:
        return tvm.transform.Sequential(prepare_passes())(mod)


def database_dir(root: Path, name: str) -> Path:
    return root / f"{name}-dense"


# ---------------------------------------------------------------------------------------------- tuning

def tune_model(name: str, trials: int, threads: int, root: Path) -> None:
    """Tune the dense model's tunable kernels with ``trials`` in all, resuming from the database: a task
    that already has its share of valid records is skipped."""
    target = host_target(threads)
    dense_model, _, shape = make_models(name)
    with tempfile.TemporaryDirectory() as tmp:
        tasks = tunable(kernel_tasks(prepare(import_model(dense_model, shape, Path(tmp)).mod, target)))
    budget = allocate([t.cost for t in tasks], trials)
    state = dict(model=name, trials=trials, threads=threads, target=str(target))
    database = tune_tasks_resumable(tasks, budget, database_dir(root, name), target, threads, state)
    wall = json.loads((database_dir(root, name) / STATE_FILE).read_text())["wall_seconds"]
    print(f"{name}: {len(database)} records, {wall:.0f} s of tuning", flush=True)


# ---------------------------------------------------------------------------------------- measuring

def tuning_summary(work_dir: Path, database) -> dict:
    """The tuning state file plus the number of measured records the database holds."""
    state = json.loads((work_dir / STATE_FILE).read_text())
    return {**state, "records": len(database)}


def build_variants(dense_model: nn.Module, unified_model: nn.Module, shape: tuple[int, ...], tmp: Path,
                   args: argparse.Namespace, result: ModelResult) -> dict[str, Variant | OrtVariant]:
    """Every build of one model; a failing variant is recorded in ``result.failures`` and skipped."""
    target = host_target(args.threads)
    preset = load_target("host")
    work_dir = database_dir(args.tuning_dir, result.name)
    database = open_database(work_dir)
    result.tuning = tuning_summary(work_dir, database)
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    dense_mod = import_model(dense_model, shape, tmp).mod
    unified_imported = import_model(unified_model, shape, tmp)
    unified_mod, _ = lower_unified(unified_imported, "fp32", tasks=preset.cores)

    def tuned(mod: tvm.IRModule) -> tuple[tvm.runtime.Executable, list[Race], int]:
        """``mod`` prepared, keep-the-better installed, built; with its races and kernel count."""
        prepared, races, kernels = keep_better(prepare(mod, target), database, target,
                                               log=lambda m: print(m, flush=True))
        with target:
            return tvm.compile(ApplyDefaultSchedules()(prepared), target=target), races, kernels

    def dense_tuned() -> tvm.runtime.Executable:
        executable, result.races, result.kernels = tuned(dense_mod)
        return executable

    def unified_tuned() -> tvm.runtime.Executable:
        executable, result.unified_races, _ = tuned(unified_mod)
        return executable

    recipes = {
        "ONNX Runtime": lambda: export_onnx(unified_model, x, tmp / f"{result.name}.onnx"),
        "dense stock": lambda: tvm.compile(dense_mod, target=codegen_target(preset)),
        "dense default": lambda: build(dense_mod, preset),
        "dense tuned": dense_tuned,
        "unified fp32": lambda: build(unified_mod, preset),
        "unified fp32 + tuned rest": unified_tuned,
        "unified int8": lambda: build(lower_unified(unified_imported, "int8", tasks=preset.cores)[0], preset),
    }
    if args.skip_stock:
        del recipes["dense stock"]
    if ort is None:
        result.failures["ONNX Runtime"] = "onnxruntime is not installed (pip install onnxruntime onnxscript)"
        del recipes["ONNX Runtime"]
    variants = {}
    for label, recipe in recipes.items():
        print(f"  building {label}", flush=True)
        source = "dense" if label.startswith("dense") else "unified"
        try:
            built = recipe()
            variants[label] = (OrtVariant(built, x, source, args.threads) if isinstance(built, Path)
                               else Variant(built, x, source))
        except Exception as err:  # noqa: BLE001 - report and go on with the other variants
            result.failures[label] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            print(f"  {label} FAILED: {result.failures[label]}", flush=True)
    return variants


def check(variants: dict[str, Variant | OrtVariant], models: dict[str, nn.Module], result: ModelResult) -> None:
    """Max relative error of each build against the PyTorch model it computes."""
    for label, variant in variants.items():
        with torch.no_grad():
            ref = models[variant.source](torch.from_numpy(variant.x)).numpy()
        result.errors[label] = float(np.abs(variant.output() - ref).max() / np.abs(ref).max())


def time_all(variants: dict[str, Variant | OrtVariant], torch_model: nn.Module, x: np.ndarray, rounds: int,
             threads: int) -> dict[str, list[float]]:
    """Interleaved rounds: PyTorch eager (unified model), then every build; per-call samples per variant."""
    samples: dict[str, list[float]] = {"PyTorch": []}
    for variant in variants.values():
        variant.output()  # warm up
    for _ in range(rounds):
        time.sleep(IDLE)
        samples["PyTorch"].append(torch_seconds(torch_model, x, SAMPLES, threads))
        for variant in variants.values():
            time.sleep(IDLE)  # TVM's pool threads spin for a while after a run; let them sleep first
            slow = variant.samples and min(variant.samples) > SLOW_SECONDS
            variant.measure(SLOW_SAMPLES if slow else SAMPLES)
    samples.update({label: v.samples for label, v in variants.items()})
    return samples


def measure_model(name: str, tmp: Path, args: argparse.Namespace) -> ModelResult:
    result = ModelResult(name)
    dense_model, unified_model, shape = make_models(name)
    variants = build_variants(dense_model, unified_model, shape, tmp, args, result)
    check(variants, {"dense": dense_model, "unified": unified_model}, result)
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    samples = time_all(variants, unified_model, x, args.rounds, args.threads)
    result.times = {label: (min(s), float(np.median(s))) for label, s in samples.items() if s}
    print(f"  {name}: " + ", ".join(f"{k} {v[0] * 1e3:.3f}/{v[1] * 1e3:.3f} ms" for k, v in result.times.items())
          + f" errors {result.errors}", flush=True)
    return result


# ------------------------------------------------------------------------------------------- report

def _ratio(times: dict[str, tuple[float, float]], num: str, den: str, i: int) -> str:
    if num not in times or den not in times:
        return "-"
    return f"{times[num][i] / times[den][i]:.2f}x"


def _summary_row(r: ModelResult) -> str:
    """Tuning budget and the keep-the-better outcome of one model, as a markdown table row."""
    tuned_wins = sum(race.winner == "tuned" for race in r.races)
    default_sum = sum(race.default * race.weight for race in r.races) * 1e3
    best_sum = sum(race.best * race.weight for race in r.races) * 1e3
    gain = f"{default_sum / best_sum:.2f}x" if r.races else "-"
    rest_wins = sum(race.winner == "tuned" for race in r.unified_races)
    return (f"| {r.name} | {r.tuning['trials']} | {r.tuning['records']} | {r.tuning['wall_seconds'] / 60:.1f} | "
            f"{r.kernels} | {len(r.races)} | {tuned_wins} | {len(r.races) - tuned_wins} | {default_sum:.3f} | "
            f"{best_sum:.3f} | {gain} | {len(r.unified_races)} / {rest_wins} |")


def _race_rows(r: ModelResult) -> list[str]:
    return [f"| {r.name} | {race.task} | {race.weight} | {race.records} | {race.default * 1e6:.1f} | "
            f"{race.tuned * 1e6:.1f} | {race.winner} | {race.default / race.tuned:.2f}x |" for race in r.races]


def write_markdown(path: Path, results: list[ModelResult], args: argparse.Namespace, seconds: float) -> None:
    lines = [
        "# Unified kernels vs dense TVM tuned with meta-schedule, keep-the-better (host)",
        "",
        (f"Machine: {cpu_name()}, {os.cpu_count()} cores (shared: compare "
         f"within a row, prefer the minimum; medians show the load). {args.threads} threads for TVM (and for "
         f"meta-schedule's builder/runner), the better of 1 and {args.threads} threads for PyTorch eager. Batch "
         f"1, 32x32 fp32 input, BatchNorm-calibrated untrained weights, unified {BLOCK[0]}x{BLOCK[1]} blocks at "
         f"sparsity {SPARSITY}. TVM target: host LLVM, mcpu={tvm.target.codegen.llvm_get_system_cpu()}. "
         f"torch {torch.__version__}, TVM {tvm.__version__}. Rounds: {args.rounds} interleaved, {SAMPLES} "
         f"single calls each ({SLOW_SAMPLES} for builds slower than {SLOW_SECONDS * 1e3:.0f} ms). Measuring "
         f"run {seconds:.0f} s."),
        "",
        (f"Tuning (`--tune`, done before this run, databases in "
         f"`{os.path.relpath(args.tuning_dir, ROOT)}/<model>-dense/`): "
         "meta-schedule evolutionary search + XGBoost cost model on the fused kernels of the prepared dense "
         f"model carrying >= {MIN_FLOP_SHARE:.1%} of its FLOPs, {TRIALS_PER_ITER} trials per iteration, the "
         "budget split over the kernels in proportion to FLOPs x occurrences (one iteration each, heaviest "
         "first, while it lasts), LocalBuilder/LocalRunner on this host. `dense tuned` then keeps, per "
         "kernel, the faster of the best database record and the default schedule, each timed alone on "
         f"random inputs (minimum over {RACE_ROUNDS} alternating rounds of {RACE_REPEATS} repeats of >= "
         f"{RACE_MIN_REPEAT_MS} ms, {args.threads} threads); kernels without a record keep the default. The "
         "unified kernels are never tuned (0 trials, hand-written schedules). `unified fp32` gives the unified "
         "model's dense rest (stem, depthwise convs, classifier, epilogues left unfused) the default "
         "schedules; `unified fp32 + tuned rest` runs the same keep-the-better on that rest against the same "
         "dense database (its kernels are the dense model's workloads), so both sides get the same tuning "
         "budget. `unified int8` computes activation scales per call (no calibration); its error is against "
         "PyTorch fp32. PyTorch eager and ONNX Runtime (CPU provider, model exported with torch.onnx's "
         f"dynamo exporter, {args.threads} intra-op threads) run the unified weights as dense tensors: "
         "neither skips pruned blocks."),
        "",
        "Produced by `python benchmarks/tuned_baseline.py " + " ".join(sys.argv[1:]) + "`.",
        "",
        "## Tuning budget and keep-the-better",
        "",
        ("Kernel times are summed over the raced kernels, weighted by occurrences (ms). Tuning wall time: "
         "the `--tune` runs up to their last measured batch, from `tuning.json`."),
        "",
        ("| model | trials budget | records in database | tuning wall min | kernels | raced (have a record) | "
         "tuned wins | default wins | sum default ms | sum best ms | default / best | unified rest: raced / "
         "tuned wins |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *[_summary_row(r) for r in results],
        "",
        "## Times (ms, minimum / median)",
        "",
        "| model | " + " | ".join(VARIANTS) + " |",
        "|---|" + "---|" * len(VARIANTS),
    ]
    for r in results:
        cells = [f"{r.times[v][0] * 1e3:.3f} / {r.times[v][1] * 1e3:.3f}" if v in r.times else "-"
                 for v in VARIANTS]
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    pairs = [("dense tuned", "unified fp32"), ("dense tuned", "unified fp32 + tuned rest"),
             ("dense default", "unified fp32"), ("PyTorch", "unified fp32"), ("ONNX Runtime", "unified fp32"),
             ("dense default", "dense tuned")]
    lines += ["", ("## Ratios (a / b = time of a / time of b, >1: b is faster; minimum-based, median-based in "
                   "brackets)"), "", "| model | " + " | ".join(f"{a} / {b}" for a, b in pairs) + " |",
              "|---|" + "---|" * len(pairs)]
    for r in results:
        cells = [f"{_ratio(r.times, a, b, 0)} ({_ratio(r.times, a, b, 1)})" for a, b in pairs]
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    lines += ["", "## Correctness", "", "| model | build | max rel err vs PyTorch |", "|---|---|---|"]
    lines += [f"| {r.name} | {v} | {r.errors[v]:.1e} |" for r in results for v in VARIANTS if v in r.errors]
    failures = [(r.name, v, msg) for r in results for v, msg in r.failures.items()]
    if failures:
        lines += ["", "## Failed builds", ""] + [f"- {m} / {v}: `{msg}`" for m, v, msg in failures]
    lines += ["", "## Per-kernel races (us per call; default / tuned > 1: the tuned record is faster)", "",
              "| model | kernel | occurrences | records | default us | tuned us | kept | default / tuned |",
              "|---|---|---|---|---|---|---|---|", *[row for r in results for row in _race_rows(r)]]
    path.write_text("\n".join(lines) + "\n")


def write_plot(path: Path, results: list[ModelResult]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [v for v in VARIANTS if v != "dense stock"]  # the stock build is off the scale
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(shown)
    xs = np.arange(len(results))
    for i, v in enumerate(shown):
        ax.bar(xs + (i - (len(shown) - 1) / 2) * width, [r.times.get(v, (np.nan,))[0] * 1e3 for r in results],
               width=width, label=v)
    ax.set_xticks(xs, [r.name for r in results])
    ax.set_ylabel("ms per inference (minimum; lower is better)")
    ax.set_title(f"Host, batch 1, 32x32: unified 4x4 @ {SPARSITY} (untuned) vs dense TVM tuned, keep-the-better")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def measure(args: argparse.Namespace) -> None:
    """Build, check and time every variant of every model; write the markdown and the plot."""
    missing = [m for m in args.models if not (database_dir(args.tuning_dir, m) / STATE_FILE).exists()]
    if missing:
        sys.exit(f"no tuning database for {', '.join(missing)} under {args.tuning_dir}: run with --tune first")
    start = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            print(name, flush=True)
            results.append(measure_model(name, Path(tmp), args))
    out = Path(args.out)
    write_markdown(out.with_suffix(".md"), results, args, time.perf_counter() - start)
    write_plot(out.with_suffix(".png"), results)
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.png')} in {time.perf_counter() - start:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tune", action="store_true", help="tune the dense models into their databases")
    parser.add_argument("--measure", action="store_true", help="build and time (the default without --tune)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--trials", type=int, default=160, help="meta-schedule trials per model (--tune)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-stock", action="store_true", help="leave out the untuned stock build")
    parser.add_argument("--tuning-dir", type=Path, default=TUNING_ROOT, help="where the databases live")
    parser.add_argument("--out", default=str(Path(__file__).with_suffix("")))
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    if args.tune:
        for name in args.models:
            print(f"tuning {name}", flush=True)
            tune_model(name, args.trials, args.threads, args.tuning_dir)
    if args.measure or not args.tune:
        measure(args)


if __name__ == "__main__":
    main()
