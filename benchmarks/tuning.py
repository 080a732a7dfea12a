"""Autotuning benchmark: what `tvm-unify tune` buys, what it costs, and how good its guides are.

- ``--tune``: tunes the built-ins (digits-cnn, ResNet-18, MobileNetV2 at 32x32; unified 4x4 blocks at
  75% sparsity, and dense) for the host into ``schedules/host`` (the shipped records) with ``--trials``
  per model, timing each run (``benchmarks/tuning.json``).
- ``--sweep N [N ...]``: tunes ResNet-18 and MobileNetV2 (unified and dense; ``--models`` for others)
  from empty records to each budget in turn, each run resuming the last, and races untuned vs tuned
  after each: latency against trials and tuning wall time. Its records became the shipped ones.
- ``--measure``: per model, untuned (``--no-schedules``) vs tuned (the records) builds, timed
  interleaved on this host (minimum over rounds: the machine is shared); the XGBoost cost model's
  quality on the recorded unified candidates (leave-one-workload-out top-k recall vs random picks); and
  the knob spaces' ceiling per unified model: its unified and planar kernels summed at their defaults
  vs at the fastest candidate the records measured for each, raced here.
- ``--count``: on the emulated aarch64 device, the instruction counts of the candidates of a few
  ResNet-18 layers against their host timings (one thread), as a Spearman rank correlation: how well
  the count runner's proxy ranks kernels.

Then writes ``benchmarks/tuning.md`` and ``.png`` from ``tuning.json``.

    python benchmarks/tuning.py --sweep 64 256
    python benchmarks/tuning.py --sweep 64 --models "digits-cnn dense" "digits-cnn unified"
    python benchmarks/tuning.py --count
    python benchmarks/tuning.py --measure
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
from machine import cpu_name

ROOT = Path(__file__).resolve().parent.parent
OUT = Path.home() / ".cache" / "tvm-unify" / "tuning-bench"  # model files and libraries (not committed)
RESULTS = ROOT / "benchmarks" / "tuning.json"
SCHEDULES = ROOT / "schedules"
MODELS = ("digits-cnn", "resnet18", "mobilenetv2")
SWEEP_MODELS = ("resnet18 unified", "mobilenetv2 unified", "resnet18 dense", "mobilenetv2 dense")
SWEEP = OUT / "sweep"  # the sweep's own records, tuned from nothing
ROUNDS = 7
TOP_K = 3
COUNT_LAYERS = 3  # ResNet-18 layers whose candidates the count correlation measures
COUNT_CANDIDATES = 10


def model_files(work: Path) -> dict[str, Path]:
    """``<model>-unified.pt`` (4x4, 75%) and ``<model>-dense.pt`` for every built-in."""
    import torch

    from tvm_unify.models import get_builtin
    from tvm_unify.models.calibration import calibrate_batchnorm
    from tvm_unify.testing import unified_model
    from tvm_unify.torchscript import save_torchscript

    work.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in MODELS:
        builtin = get_builtin(name)
        torch.manual_seed(0)
        dense = calibrate_batchnorm(builtin.factory(), builtin.input_shape)
        unified, _ = unified_model(name)
        for variant, model in (("unified", unified), ("dense", dense)):
            path = work / f"{name}-{variant}.pt"
            if not path.exists():
                save_torchscript(model, path, builtin.input_shape, {"model": name})
            files[f"{name} {variant}"] = path
    return files


def load_results() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def save_results(results: dict) -> None:
    RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


def tune(args: argparse.Namespace) -> None:
    from tvm_unify.targets import load_target
    from tvm_unify.tuning.model import tune_model
    from tvm_unify.tuning.runners import LocalRunner

    results = load_results()
    for label, path in model_files(OUT).items():
        if args.models and label not in args.models:
            continue
        print(f"tuning {label}", flush=True)
        start = time.perf_counter()
        rows = tune_model(path, load_target("host"), SCHEDULES / "host", LocalRunner(), trials=args.trials,
                          dense="dense" in label, log=lambda m: print(m, flush=True), kernels=args.kernels)
        seconds = time.perf_counter() - start
        previous = results.setdefault("tune", {}).get(label, {})
        results["tune"][label] = {"trials": sum(r.trials for r in rows),  # rows count earlier runs' trials too
                                  "seconds": previous.get("seconds", 0.0) + seconds,
                                  "kernels": len(rows), "tuned": sum(r.tuned for r in rows)}
        save_results(results)


def _seconds(library: Path, x: np.ndarray) -> float:
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(library)), tvm.cpu())
    arg = tvm.runtime.tensor(x)
    vm["main"](arg)
    return min(vm.time_evaluator("main", tvm.cpu(), number=5, repeat=3)(arg).results)


def race(path: Path, dense: bool, schedules: Path) -> dict:
    """Untuned vs tuned (the records under ``schedules``) builds of one model: outputs checked, then
    timed in interleaved rounds; the minimum and median per build, and how many kernels are tuned."""
    from tvm_unify.compiler import compile_model
    from tvm_unify.frontend import import_torchscript
    from tvm_unify.runtime.local import run_local
    from tvm_unify.testing import assert_matches

    imported = import_torchscript(path)
    builds = {}
    for variant, records in (("untuned", None), ("tuned", schedules)):
        library = OUT / f"{path.stem}-{variant}.so"
        result = compile_model(imported, "host", library, dense=dense, schedules=records)
        builds[variant] = library
        if variant == "tuned":
            kernels = result.schedules
    x = np.random.default_rng(0).standard_normal(imported.input_shape).astype("float32")
    assert_matches(run_local(builds["tuned"], x), run_local(builds["untuned"], x))
    samples = {v: [] for v in builds}
    for _ in range(ROUNDS):
        for variant, library in builds.items():
            time.sleep(0.2)
            samples[variant].append(_seconds(library, x))
    return {"untuned": min(samples["untuned"]), "tuned": min(samples["tuned"]),
            "untuned_median": float(np.median(samples["untuned"])),
            "tuned_median": float(np.median(samples["tuned"])),
            "kernels": len(kernels), "tuned_kernels": sum(v.startswith("tuned") for v in kernels.values())}


def latency(results: dict) -> None:
    """Untuned vs tuned with the shipped records, per model."""
    rows = {}
    for label, path in model_files(OUT).items():
        rows[label] = race(path, "dense" in label, SCHEDULES)
        print(label, rows[label], flush=True)
    results["latency"] = rows


def sweep(args: argparse.Namespace) -> None:
    """Tune each model to every budget of ``args.sweep`` in turn (each run resumes the previous one's
    records, in a fresh folder of their own) and race untuned vs tuned after each: latency and
    cumulative tuning wall time per budget."""
    from tvm_unify.targets import load_target
    from tvm_unify.tuning.model import tune_model
    from tvm_unify.tuning.runners import LocalRunner

    files = model_files(OUT)
    for trials in sorted(args.sweep):
        for label in args.models or SWEEP_MODELS:
            results = load_results()
            points = results.setdefault("sweep", {}).setdefault(label, {})
            if str(trials) in points:
                continue
            dense = "dense" in label
            print(f"sweep: {label} to {trials} trials", flush=True)
            start = time.perf_counter()
            rows = tune_model(files[label], load_target("host"), SWEEP / "host", LocalRunner(), trials=trials,
                              dense=dense, kernels="dense" if dense else "all", log=lambda m: print(m, flush=True))
            seconds = max((p["seconds"] for p in points.values()), default=0.0) + time.perf_counter() - start
            point = race(files[label], dense, SWEEP)
            point.update(seconds=seconds, trials=sum(r.trials for r in rows))
            points[str(trials)] = point
            print(label, trials, point, flush=True)
            save_results(results)


def _layers() -> dict:
    """Unified workload key -> UnifiedLayer, for the three unified built-ins (host lowering)."""
    from tvm_unify.frontend import import_torchscript
    from tvm_unify.pipeline import codegen_target
    from tvm_unify.targets import load_target
    from tvm_unify.tuning.model import unified_templates

    preset = load_target("host")
    target = codegen_target(preset)
    return {template.key: template.layer for label, path in model_files(OUT).items() if "unified" in label
            for template in unified_templates(import_torchscript(path), "fp32", preset, target)[1]}


def cost_model_quality(results: dict) -> None:
    """Leave-one-workload-out: train on the other workloads' candidates, rank this one's; top-k recall
    (how many of the k truly fastest are among the k predicted fastest) against random picks (k/n)."""
    import xgboost

    from tvm_unify.tuning.records import Records
    from tvm_unify.tuning.space import features

    layers = _layers()
    records = Records(SCHEDULES / "host").unified
    data = {}
    for key, entry in records.items():
        valid = [t for t in entry["trials"] if t.get("cost")]
        if key in layers and entry.get("unit") == "s":
            data[key] = ([features(layers[key], t["knobs"]) for t in valid],
                         [np.log(entry["default"] / t["cost"]) for t in valid])
    recalls, randoms, best_hits = [], [], []
    for key, (x, y) in data.items():
        if len(y) < 2 * TOP_K:
            continue
        train_x = [row for k, (xs, _) in data.items() if k != key for row in xs]
        train_y = [v for k, (_, ys) in data.items() if k != key for v in ys]
        model = xgboost.XGBRegressor(n_estimators=60, max_depth=4, learning_rate=0.2, subsample=0.9,
                                     random_state=0, n_jobs=1).fit(np.asarray(train_x), np.asarray(train_y))
        predicted = set(np.argsort(model.predict(np.asarray(x)))[::-1][:TOP_K])
        truth = set(np.argsort(y)[::-1][:TOP_K])
        recalls.append(len(predicted & truth) / TOP_K)
        randoms.append(TOP_K / len(y))
        best_hits.append(int(np.argmax(y)) in predicted)
    results["cost_model"] = {"workloads": len(recalls), "k": TOP_K, "xgboost_recall": float(np.mean(recalls)),
                             "random_recall": float(np.mean(randoms)),
                             "xgboost_best_in_top_k": float(np.mean(best_hits)),
                             "random_best_in_top_k": float(np.mean(randoms)),
                             "candidates_per_workload": float(np.mean([len(d[1]) for d in data.values()]))}
    print(results["cost_model"], flush=True)


def knob_ceiling(results: dict) -> None:
    """Per unified built-in: its unified and planar kernels at their untuned knobs vs at the fastest
    candidate the shipped host records measured for each, raced in alternating rounds here (a record's
    own costs come from different runs and loads), summed with calls per inference: what the recorded
    candidates could save at most, kernel time only, and how much of each space tuning measured."""
    from tvm_unify.frontend import import_torchscript
    from tvm_unify.kernels import cpu_features
    from tvm_unify.pipeline import codegen_target
    from tvm_unify.targets import load_target
    from tvm_unify.tuning.model import prepared_kernels, unified_templates
    from tvm_unify.tuning.records import Records
    from tvm_unify.tuning.runners import LocalRunner
    from tvm_unify.tuning.search import SEED, TemplateSearch

    records = Records(SCHEDULES / "host")
    preset = load_target("host")
    target = codegen_target(preset)
    cpu = cpu_features(target)
    search = TemplateSearch(records, LocalRunner(), target, cpu)
    rows = {}
    for label, path in model_files(OUT).items():
        if "unified" not in label:
            continue
        mod, unified = unified_templates(import_torchscript(path), "fp32", preset, target)
        templates = [*unified, *prepared_kernels(mod, target)[2]]
        row = {"default": 0.0, "best": 0.0, "measured": 0, "space": 0, "kernels": len(templates)}
        for template in templates:
            trials = [t for t in records.unified.get(template.key, {}).get("trials", []) if t.get("cost")]
            default_knobs = template.default_knobs()
            x = np.random.default_rng(SEED).standard_normal(template.x_shape()).astype("float32")
            best_knobs = min(trials, key=lambda t: t["cost"])["knobs"] if trials else default_knobs
            default, best = search.race(template, default_knobs, best_knobs, x)
            row["default"] += template.calls * default
            row["best"] += template.calls * min(default, best)
            row["measured"] += len(trials)
            row["space"] += len(template.candidates(cpu, True)) - 1
        rows[label] = row
        print(label, row, flush=True)
    results["ceiling"] = rows


def count_correlation(results: dict, port: int) -> None:
    """Instruction counts on the emulated device vs host seconds (1 thread) of the same candidates."""
    import tvm
    from scipy.stats import spearmanr

    from tvm_unify.device.emulator import start_device, stop_device
    from tvm_unify.device.procs import free_port
    from tvm_unify.kernels import CpuFeatures
    from tvm_unify.pipeline import codegen_target
    from tvm_unify.runtime.rpc import DeviceSpec
    from tvm_unify.targets import load_target
    from tvm_unify.tuning.runners import LocalRunner, RemoteRunner, kernel_model
    from tvm_unify.tuning.space import UnifiedTemplate, candidates, options_for

    layers = [layer for layer in _layers().values() if layer.name.startswith("layers.")][:COUNT_LAYERS]
    state = start_device(port or free_port(), log=print)
    a76 = load_target("a76")
    counter = RemoteRunner(DeviceSpec("127.0.0.1", state.port), a76, timeout=120, count=True)
    host, local = codegen_target(load_target("host")), LocalRunner()
    rng = random.Random(0)
    points = []
    try:
        for layer in layers:
            pool = candidates(layer, CpuFeatures(), parallel=False)
            picks = [pool[0], *rng.sample(pool[1:], min(COUNT_CANDIDATES - 1, len(pool) - 1))]
            x = np.random.default_rng(0).standard_normal(layer.dims.input_shape).astype("float32")
            for knobs in picks:
                func, weight = layer.kernel(options_for(layer, knobs))
                model = kernel_model(func, weight.arrays)
                count = counter.measure(tvm.compile(model, target=codegen_target(a76)), x).cost
                seconds = local.measure(tvm.compile(model, target=host), x).cost
                points.append({"layer": f"{layer.name} ({UnifiedTemplate(layer).describe()})", "knobs": knobs, "count": count,
                               "seconds": seconds})
                print(points[-1], flush=True)
    finally:
        stop_device(state.port)
    per_layer = {}
    for name in dict.fromkeys(p["layer"] for p in points):
        mine = [p for p in points if p["layer"] == name]
        per_layer[name] = float(spearmanr([p["count"] for p in mine], [p["seconds"] for p in mine]).statistic)
    results["count"] = {"points": points, "spearman": per_layer}


def _records_run(results: dict, label: str) -> dict:
    """Trials and tuning seconds behind the shipped records of ``label``: the sweep's largest budget,
    else a ``--tune`` run's."""
    points = results.get("sweep", {}).get(label)
    if points:
        return points[max(points, key=int)]
    return results.get("tune", {}).get(label, {})


def write_report(results: dict) -> None:
    lines = ["# Autotuning: `tvm-unify tune` on the host (and the count runner's proxy)", "",
             f"Machine: {results.get('cpu', cpu_name())}, {os.cpu_count()} cores (load average "
             f"{results.get('load', 'not recorded')} while measuring): every latency is the minimum over interleaved "
             "rounds, and ratios compare builds measured in the same run. TVM_NUM_THREADS=2. Batch 1, 32x32 input "
             "(digits-cnn 8x8), BatchNorm-calibrated untrained weights; unified = 4x4 blocks at 75% sparsity "
             "(`tvm_unify.testing.unified_model`).", "",
             "Produced by `python benchmarks/tuning.py --sweep 64 256`, then `--sweep 1000 --models "
             "\"mobilenetv2 unified\" \"resnet18 unified\"` (its records are the shipped `schedules/host/`; the "
             "dense models stop at 256 trials, about 17 min of meta-schedule per 256 here), `--count` and "
             "`--measure` (one run each).", "",
             "## Untuned vs tuned (ms per inference, minimum of rounds; median in brackets)", "",
             "| model | trials | tuning wall min | kernels tuned / all | untuned ms | tuned ms | speed-up |",
             "|---|---|---|---|---|---|---|"]
    for label, row in results.get("latency", {}).items():
        tuning = _records_run(results, label)
        lines.append(f"| {label} | {tuning.get('trials', '-')} | {tuning.get('seconds', 0) / 60:.1f} | "
                     f"{row['tuned_kernels']} / {row['kernels']} | {row['untuned'] * 1e3:.3f} "
                     f"({row['untuned_median'] * 1e3:.3f}) | {row['tuned'] * 1e3:.3f} "
                     f"({row['tuned_median'] * 1e3:.3f}) | "
                     f"{row['untuned'] / row['tuned']:.2f}x{'' if row['tuned_kernels'] else ' (identical builds)'} |")
    lines += ["", ("A row with no tuned kernel compares two identical builds: its ratio is this run's noise "
                   "floor. Per-kernel costs (the tune table, `schedules/host/unified.json`) are measured alone, "
                   "minimum of re-raced rounds, and are far steadier than whole-model latency here."), "",
              ("Dense kernels get meta-schedule's evolutionary search with its XGBoost cost model, then a "
               "keep-the-better race per kernel against the default rules (`tvm_unify/tuning/keep_better.py`). "
               "`tvm_unify/tuning/fast_import.py` keeps each builder and runner worker's import of meta-schedule's "
               "tensor intrinsics to seconds; before it, that import outlasted the builder's 120 s timeout here "
               "and no dense candidate could be measured.")]
    sweep_points = results.get("sweep")
    if sweep_points:
        lines += ["", "## Trial sweep: untuned vs tuned by budget", "",
                  ("Each model tuned from empty records (`python benchmarks/tuning.py --sweep ...`), every budget "
                   "resuming the previous one's records; after each, untuned and tuned builds raced as above. "
                   "Wall time is the tuning's, cumulative. The 1000-trial points (a later session, resuming the "
                   "shipped 256-trial records) ran beside a count-runner tuning job on the emulated device: their "
                   "milliseconds are 1.2-2x the quiet table's above, their ratios still compare two builds of one "
                   "run."), "",
                  "| model | trials | tuning wall min | kernels tuned / all | untuned ms | tuned ms | speed-up |",
                  "|---|---|---|---|---|---|---|"]
        for label, points in sweep_points.items():
            for budget, row in sorted(points.items(), key=lambda item: int(item[0])):
                lines.append(f"| {label} | {budget} | {row['seconds'] / 60:.1f} | {row['tuned_kernels']} / "
                             f"{row['kernels']} | {row['untuned'] * 1e3:.3f} ({row['untuned_median'] * 1e3:.3f}) | "
                             f"{row['tuned'] * 1e3:.3f} ({row['tuned_median'] * 1e3:.3f}) | "
                             f"{row['untuned'] / row['tuned']:.2f}x |")
        again = {label: (points[max(points, key=int)], results["latency"][label])
                 for label, points in sweep_points.items() if label in results.get("latency", {})}
        if again:
            spread = ", ".join(f"{label} {s['untuned'] / s['tuned']:.2f}x vs {m['untuned'] / m['tuned']:.2f}x"
                               for label, (s, m) in again.items())
            lines += ["", ("The sweep's last budget and the table above race the same records in two runs: "
                           f"{spread}. The difference is this machine's run-to-run noise on whole-model latency.")]
    quality = results.get("cost_model")
    if quality:
        lines += ["", "## Cost model quality (unified knob search)", "",
                  (f"Leave-one-workload-out over the {quality['workloads']} recorded host workloads with at least "
                   f"{2 * quality['k']} measured candidates (mean {quality['candidates_per_workload']:.1f}): an "
                   "XGBoost regressor trained on the other workloads' candidates ranks this workload's; top-k "
                   "recall is the share of the k truly fastest among the k predicted fastest. Random picks "
                   f"score k/n. The candidates were themselves chosen by the model during tuning, so they are "
                   f"already the better part of each space: the test is ranking among good candidates."), "",
                  f"| k | XGBoost recall@k | random recall@k | fastest in XGBoost top-k | fastest in random top-k |",
                  "|---|---|---|---|---|",
                  f"| {quality['k']} | {quality['xgboost_recall']:.2f} | {quality['random_recall']:.2f} | "
                  f"{quality['xgboost_best_in_top_k']:.2f} | {quality['random_best_in_top_k']:.2f} |"]
    ceiling = results.get("ceiling")
    if ceiling:
        lines += ["", "## Ceiling of the knob spaces (unified and planar kernels)", "",
                  ("Per unified built-in, each unified and planar kernel at its untuned knobs and at the fastest "
                   "candidate the shipped records measured for it, raced here in alternating rounds (minimum of 3, "
                   "each kernel measured alone), summed with calls per inference: what choosing among the recorded "
                   "candidates could save at most. Kernel time only, not the VM's calls and allocations; the "
                   "XGBoost-guided search measured the share of each space shown."), "",
                  "| model | kernels | candidates measured / space | default sum us | best sum us | ceiling |",
                  "|---|---|---|---|---|---|"]
        for label, row in ceiling.items():
            lines.append(f"| {label} | {row['kernels']} | {row['measured']} / {row['space']} | "
                         f"{row['default'] * 1e6:.0f} | {row['best'] * 1e6:.0f} | "
                         f"{row['default'] / row['best']:.2f}x |")
    count = results.get("count")
    if count:
        lines += ["", "## Count runner: instruction counts vs host time of the same candidates", "",
                  ("Candidates of ResNet-18 unified layers (task counts fixed, as the count runner searches "
                   "them): exact aarch64 instruction counts of the kernel on the emulated device (`a76` build) "
                   "against host seconds (x86 build of the same knobs, minimum of 5 repeats, 2 threads). A "
                   "proxy check only: the counts are not ARM time, and x86 time is not ARM time either."), "",
                  "| layer | candidates | Spearman rank correlation |", "|---|---|---|"]
        for layer, rho in count["spearman"].items():
            n = sum(p["layer"] == layer for p in count["points"])
            lines.append(f"| {layer} | {n} | {rho:.2f} |")
    (ROOT / "benchmarks" / "tuning.md").write_text("\n".join(lines) + "\n")
    write_plot(results)


def write_plot(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.5))
    rows = results.get("latency", {})
    xs = np.arange(len(rows))
    axes[0].bar(xs - 0.2, [r["untuned"] * 1e3 for r in rows.values()], 0.4, label="untuned")
    axes[0].bar(xs + 0.2, [r["tuned"] * 1e3 for r in rows.values()], 0.4, label="tuned (shipped records)")
    axes[0].set_xticks(xs, list(rows), rotation=30, ha="right", fontsize=8)
    axes[0].set_ylabel("ms per inference (min)")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=8)
    axes[0].set_title("host latency")
    quality = results.get("cost_model")
    if quality:
        axes[1].bar(["XGBoost", "random"], [quality["xgboost_recall"], quality["random_recall"]])
        axes[1].set_ylabel(f"top-{quality['k']} recall")
        axes[1].set_title("cost model, leave-one-workload-out")
    count = results.get("count")
    if count:
        for layer in count["spearman"]:
            mine = [p for p in count["points"] if p["layer"] == layer]
            axes[2].scatter([p["count"] / 1e3 for p in mine], [p["seconds"] * 1e6 for p in mine],
                            label=f"{layer.split(' ')[0]} (rho {count['spearman'][layer]:.2f})", s=14)
        axes[2].set_xlabel("aarch64 instructions (k, emulated device)")
        axes[2].set_ylabel("host us")
        axes[2].legend(fontsize=7)
        axes[2].set_title("count runner vs host time")
    for label, points in results.get("sweep", {}).items():
        budgets = sorted(points, key=int)
        axes[3].plot([int(b) for b in budgets], [points[b]["untuned"] / points[b]["tuned"] for b in budgets],
                     marker="o", label=label)
    if results.get("sweep"):
        axes[3].axhline(1.0, color="grey", linewidth=0.8)
        axes[3].set_xscale("log", base=2)
        axes[3].set_xlabel("trials (per model)")
        axes[3].set_ylabel("untuned / tuned latency")
        axes[3].legend(fontsize=7)
        axes[3].set_title("trial sweep")
    fig.tight_layout()
    fig.savefig(ROOT / "benchmarks" / "tuning.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tune", action="store_true")
    parser.add_argument("--measure", action="store_true")
    parser.add_argument("--count", action="store_true")
    parser.add_argument("--sweep", type=int, nargs="+", metavar="TRIALS",
                        help="tune from nothing to each of these budgets in turn, racing after each")
    parser.add_argument("--trials", type=int, default=400, help="trials per model (--tune)")
    parser.add_argument("--models", nargs="+", help="with --tune or --sweep: only these, e.g. 'resnet18 dense'")
    parser.add_argument("--kernels", default="all", choices=["all", "unified", "planar", "dense"], help="with --tune")
    parser.add_argument("--port", type=int, default=0, help="emulated device port (--count; default: a free one)")
    args = parser.parse_args()
    os.environ.setdefault("TVM_NUM_THREADS", "2")
    results = load_results()
    if args.tune:
        tune(args)
        results = load_results()
    if args.sweep:
        sweep(args)
        results = load_results()
    if args.count:
        count_correlation(results, args.port)
        save_results(results)
    if args.measure:
        results["cpu"] = cpu_name()
        latency(results)
        results["load"] = f"{os.getloadavg()[0]:.1f}"
        cost_model_quality(results)
        knob_ceiling(results)
        save_results(results)
    write_report(results)
    print("wrote benchmarks/tuning.md, benchmarks/tuning.png", file=sys.stderr)


if __name__ == "__main__":
    main()
