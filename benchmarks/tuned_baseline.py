"""Unified kernels vs dense TVM *tuned with meta-schedule* (same trial budget), on the host, in one run.

For ResNet-18 and MobileNetV2 (32x32, batch 1, BatchNorm-calibrated, 4x4 unified weights at 75%
sparsity) this builds and times, interleaved, with the same thread count:

- ``dense stock``: plain ``tvm.compile`` with TVM's stock pipeline (no CPU schedules for conv2d);
- ``dense default``: ``compiler.build``, the project's hand-written default schedules;
- ``dense tuned``: meta-schedule (evolutionary search, XGBoost cost model) over every fused kernel of
  the dense model with ``--trials`` measured trials, untuned leftovers get the default schedules;
- ``unified fp32``: ``lower_unified`` + ``compiler.build`` (default schedules for the dense rest);
- ``unified tuned``: the same unified model with its remaining dense kernels (stem, depthwise convs,
  epilogues, classifier) tuned with the same ``--trials`` budget; the unified kernels carry
  ``tirx.is_scheduled`` and keep their hand-written schedule;
- PyTorch eager.

Tuned builds go through the project's graph preparation (``prepare_passes``: HWIO kernels, BN folded
into the conv epilogues, fused) so both tuned and default builds tune/schedule the same fused kernels.
Every build is checked against PyTorch (max relative error). Times: minimum and median over single
calls in interleaved rounds (the host is shared and noisy).

    python benchmarks/tuned_baseline.py [--threads 2] [--trials 64] [--rounds 5] [--skip-stock]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the projection helper shared with the tests
sys.path.insert(0, str(ROOT / "benchmarks"))  # shared timing helpers of unified_kernels.py

import numpy as np  # noqa: E402
import torch  # noqa: E402
import tvm  # noqa: E402
from torch import nn  # noqa: E402
from tvm import relax  # noqa: E402
from tvm.s_tir import meta_schedule as ms  # noqa: E402
from tvm.s_tir.analysis import estimate_tir_flops  # noqa: E402
from unified_kernels import BLOCK, IDLE, import_module, torch_seconds  # noqa: E402
from unified_weights import unify_model  # noqa: E402

from tvm_unify.bn_calibration import calibrate_batchnorm  # noqa: E402
from tvm_unify.compiler import build, codegen_target, lower_unified  # noqa: E402
from tvm_unify.models import get_builtin  # noqa: E402
from tvm_unify.schedule.pipeline import SCHEDULED, ApplyDefaultSchedules, prepare_passes  # noqa: E402
from tvm_unify.targets import load_target  # noqa: E402

SPARSITY = 0.75
MODELS = ("resnet18", "mobilenetv2")
TRIALS_PER_ITER = 8  # small, so the budget reaches more than a couple of tasks
SAMPLES = 20  # single calls per round and variant
SLOW_SAMPLES = 3  # for builds slower than SLOW_SECONDS per call (the stock build)
SLOW_SECONDS = 0.02
VARIANTS = ["PyTorch", "dense stock", "dense default", "dense tuned", "unified fp32", "unified tuned"]


@dataclass
class Variant:
    """One executable of a model, callable on a fixed input; collects per-call times."""

    executable: tvm.runtime.Executable
    x: np.ndarray
    build_seconds: float = 0.0
    tune_seconds: float = 0.0
    tasks: int = 0
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
class ModelResult:
    name: str
    times: dict[str, tuple[float, float]] = field(default_factory=dict)  # variant -> (min, median) seconds
    errors: dict[str, float] = field(default_factory=dict)  # variant -> max rel err vs PyTorch
    tuning: dict[str, tuple[float, int]] = field(default_factory=dict)  # variant -> (seconds, tasks tuned)
    failures: dict[str, str] = field(default_factory=dict)


def make_models(name: str) -> tuple[nn.Module, nn.Module, tuple[int, ...]]:
    """The BN-calibrated dense model and its unified twin (re-calibrated after projection)."""
    builtin = get_builtin(name)
    dense = calibrate_batchnorm(builtin.factory(), builtin.input_shape)
    unified = calibrate_batchnorm(builtin.factory(), builtin.input_shape)
    unify_model(unified, BLOCK, SPARSITY)
    unified = calibrate_batchnorm(unified, builtin.input_shape)
    return dense.eval(), unified.eval(), builtin.input_shape


def host_target(threads: int | None = None) -> tvm.target.Target:
    """The host codegen target (this CPU's features); with ``num-cores`` set for meta-schedule if given."""
    target = codegen_target(load_target("host"))
    return target if threads is None else tvm.target.Target({**target.export(), "num-cores": threads})


def prepare(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """The project's graph preparation (layout, BN decomposition, legalize, fuse), before scheduling."""
    with target:
        return tvm.transform.Sequential(prepare_passes())(mod)


def tunable_tasks(mod: tvm.IRModule, target: tvm.target.Target, count: int) -> list[ms.ExtractedTask]:
    """The ``count`` heaviest meta-schedule tasks (FLOPs x occurrences) among the fused kernels that are
    not already scheduled (the unified kernels are). The gradient task scheduler warms up round-robin in
    list order, so a small budget spread over all tasks would go to reshapes and means first."""
    tasks = [t for t in ms.relax_integration.extract_tasks(mod, target)
             if not int(t.dispatched[0]["main"].attrs.get(SCHEDULED, 0))]
    tasks.sort(key=lambda t: -estimate_tir_flops(t.dispatched[0]) * t.weight)
    return tasks[:count]


def tune(mod: tvm.IRModule, target: tvm.target.Target, work_dir: Path, trials: int,
         threads: int) -> tuple[tvm.IRModule, float, int]:
    """Tune the prepared module's unscheduled kernels; return it with the best schedules applied, the
    tuning wall time and the number of tasks. Kernels without a valid record get the default rules."""
    start = time.perf_counter()
    tasks = tunable_tasks(mod, target, max(1, trials // TRIALS_PER_ITER))
    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
        tasks, str(work_dir), num_threads=threads, seed=0)
    database = ms.tune_tasks(
        tasks=contexts, task_weights=weights, work_dir=str(work_dir), max_trials_global=trials,
        num_trials_per_iter=TRIALS_PER_ITER,
        builder=ms.builder.LocalBuilder(max_workers=threads, timeout_sec=120),
        runner=ms.runner.LocalRunner(evaluator_config=ms.runner.EvaluatorConfig(
            number=5, repeat=1, min_repeat_ms=20)),
        cost_model=ms.cost_model.XGBModel(num_warmup_samples=16, verbose_eval=0))
    seconds = time.perf_counter() - start
    with target, database, tvm.transform.PassContext(opt_level=3):
        mod = relax.transform.MetaScheduleApplyDatabase()(mod)
        mod = ApplyDefaultSchedules()(mod)
    return mod, seconds, len(tasks)


def compile_timed(fn, x: np.ndarray) -> Variant:
    """Run ``fn() -> Executable`` and wrap the result, recording its wall time."""
    start = time.perf_counter()
    executable = fn()
    return Variant(executable, x, build_seconds=time.perf_counter() - start)


def build_variants(dense_model: nn.Module, unified_model: nn.Module, shape: tuple[int, ...], tmp: Path,
                   trials: int, threads: int, stock: bool, result: ModelResult) -> dict[str, Variant]:
    """Every TVM build of one model; a failing variant is recorded in ``result.failures`` and skipped."""
    target = host_target()
    tuning_target = host_target(threads)
    preset = load_target("host")
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    dense_mod = import_module(dense_model, shape, tmp).mod
    unified_mod, _ = lower_unified(import_module(unified_model, shape, tmp), "fp32")

    def tuned(mod: tvm.IRModule, label: str):
        def run() -> tvm.runtime.Executable:
            tuned_mod, seconds, tasks = tune(prepare(mod, tuning_target), tuning_target,
                                             tmp / f"ms-{result.name}-{label}", trials, threads)
            result.tuning[label] = (seconds, tasks)
            return tvm.compile(tuned_mod, target=tuning_target)
        return run

    recipes = {
        "dense stock": lambda: tvm.compile(dense_mod, target=target),
        "dense default": lambda: build(dense_mod, preset),
        "dense tuned": tuned(dense_mod, "dense tuned"),
        "unified fp32": lambda: build(unified_mod, preset),
        "unified tuned": tuned(unified_mod, "unified tuned"),
    }
    if not stock:
        del recipes["dense stock"]
    variants = {}
    for label, recipe in recipes.items():
        print(f"  building {label}", flush=True)
        try:
            variants[label] = compile_timed(recipe, x)
        except Exception as err:  # noqa: BLE001 - report and go on with the other variants
            result.failures[label] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            print(f"  {label} FAILED: {result.failures[label]}", flush=True)
    return variants


def check(variants: dict[str, Variant], models: dict[str, nn.Module], result: ModelResult) -> None:
    """Max relative error of each build against the PyTorch model it was built from."""
    for label, variant in variants.items():
        model = models["unified" if label.startswith("unified") else "dense"]
        with torch.no_grad():
            ref = model(torch.from_numpy(variant.x)).numpy()
        result.errors[label] = float(np.abs(variant.output() - ref).max() / np.abs(ref).max())


def time_all(variants: dict[str, Variant], torch_model: nn.Module, x: np.ndarray, rounds: int,
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


def run_model(name: str, tmp: Path, trials: int, rounds: int, threads: int, stock: bool) -> ModelResult:
    result = ModelResult(name)
    dense_model, unified_model, shape = make_models(name)
    variants = build_variants(dense_model, unified_model, shape, tmp, trials, threads, stock, result)
    check(variants, {"dense": dense_model, "unified": unified_model}, result)
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    samples = time_all(variants, unified_model, x, rounds, threads)
    result.times = {label: (min(s), float(np.median(s))) for label, s in samples.items() if s}
    print(f"  {name}: " + ", ".join(f"{k} {v[0] * 1e3:.3f}/{v[1] * 1e3:.3f} ms" for k, v in result.times.items())
          + f" errors {result.errors} tuning {result.tuning}", flush=True)
    return result


def _ratio(times: dict[str, tuple[float, float]], num: str, den: str, i: int) -> str:
    if num not in times or den not in times:
        return "-"
    return f"{times[num][i] / times[den][i]:.2f}x"


def write_markdown(path: Path, results: list[ModelResult], args: argparse.Namespace, seconds: float) -> None:
    lines = [
        "# Unified kernels vs dense TVM tuned with meta-schedule (host)",
        "",
        (f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores **shared with another "
        f"job that was compiling and testing during this run** (noisy: compare within a row, prefer the "
        f"minimum; medians show the load). {args.threads} threads for TVM (and for meta-schedule's "
        f"builder/runner), the better of 1 and {args.threads} threads for PyTorch eager. Batch 1, 32x32 fp32 "
        f"input, BatchNorm-calibrated untrained weights, unified {BLOCK[0]}x{BLOCK[1]} blocks at sparsity "
        f"{SPARSITY}. TVM target: host LLVM, mcpu={tvm.target.codegen.llvm_get_system_cpu()}. "
        f"torch {torch.__version__}, TVM {tvm.__version__}. Rounds: {args.rounds} interleaved, "
        f"{SAMPLES} single calls each ({SLOW_SAMPLES} for builds slower than {SLOW_SECONDS * 1e3:.0f} ms). "
        f"Whole run {seconds:.0f} s."),
        "",
        (f"Tuning: meta-schedule evolutionary search + XGBoost cost model, `max_trials_global={args.trials}` "
        f"per tuned build ({TRIALS_PER_ITER} per iteration, 16 warm-up samples, gradient task scheduler) "
        f"spent on the {args.trials // TRIALS_PER_ITER} heaviest fused kernels (FLOPs x occurrences), "
        "LocalBuilder/LocalRunner on this host; "
        "kernels left without a valid record get the project's default schedules. Tuned builds go "
        "through the same graph preparation as the default builds (HWIO kernels, BN folded, fused). "
        f"The budget is tiny for whole networks ({args.trials} trials over all tasks): a real "
        "meta-schedule run spends ~1000+ trials per network, so `dense tuned` here is a lower bound on "
        "what tuning reaches."),
        "",
        "Produced by `python benchmarks/tuned_baseline.py " + " ".join(sys.argv[1:]) + "`.",
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
    pairs = [("dense tuned", "unified fp32"), ("dense tuned", "unified tuned"), ("dense default", "unified fp32"),
             ("dense stock", "dense tuned"), ("dense default", "dense tuned"), ("PyTorch", "unified fp32")]
    lines += ["", ("## Ratios (a / b = time of a / time of b, >1: b is faster; minimum-based, median-based in "
                   "brackets)"), "", "| model | " + " | ".join(f"{a} / {b}" for a, b in pairs) + " |",
              "|---|" + "---|" * len(pairs)]
    for r in results:
        cells = [f"{_ratio(r.times, a, b, 0)} ({_ratio(r.times, a, b, 1)})" for a, b in pairs]
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    lines += ["", "## Tuning and correctness", "",
              "| model | build | tuning s | kernels tuned | max rel err vs PyTorch |", "|---|---|---|---|---|"]
    for r in results:
        for v in VARIANTS[1:]:
            if v in r.errors:
                secs, tasks = r.tuning.get(v, (None, None))
                lines.append(f"| {r.name} | {v} | {'-' if secs is None else f'{secs:.0f}'} | "
                             f"{'-' if tasks is None else tasks} | {r.errors[v]:.1e} |")
    failures = [(r.name, v, msg) for r in results for v, msg in r.failures.items()]
    if failures:
        lines += ["", "## Failed builds", ""] + [f"- {m} / {v}: `{msg}`" for m, v, msg in failures]
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
    ax.set_title(f"Host, batch 1, 32x32: unified 4x4 @ {SPARSITY} vs dense TVM tuned (same trial budget)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--trials", type=int, default=64, help="meta-schedule max_trials_global per tuned build")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-stock", action="store_true", help="leave out the untuned stock build")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--out", default=str(Path(__file__).with_suffix("")))
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            print(name, flush=True)
            results.append(run_model(name, Path(tmp), args.trials, args.rounds, args.threads, not args.skip_stock))
    out = Path(args.out)
    write_markdown(out.with_suffix(".md"), results, args, time.perf_counter() - start)
    write_plot(out.with_suffix(".png"), results)
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.png')} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
