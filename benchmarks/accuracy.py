"""Accuracy of unified CNNs: ADMM unification vs one-shot projection + fine-tune vs magnitude block pruning.

Models: digits-cnn on ``digits``; ResNet-18 and MobileNetV2 (CIFAR-size, 32x32) on ``digits-rgb``.
Methods, all from the same dense-trained network and with the same epoch budget after it:

* ``admm``: one-epoch ADMM rounds (2/3 of the budget; Adam W-step, rho growing geometrically from
  ``Schedule.rho`` to ``rho_max``), hard projection, masked fine-tuning for the rest;
* ``one-shot+ft``: hard projection of the dense weights, then masked fine-tuning for the whole budget;
* ``magnitude``: block pruning by block energy without unification (surviving blocks stay dense), then
  masked fine-tuning for the whole budget;
* ``dense``: the reference, the dense network trained on for the same budget (no constraint).

The two big CNNs cost ~50 ms per 32x32 image per training step on one core, so they train on 16x16
digits-rgb images (the same layers and weight shapes; their global pooling takes any input size) with
fewer epochs than digits-cnn; the budget is in the generated markdown. Every (model, seed) is one job;
``--jobs`` runs that many at once, one torch thread each.

    python benchmarks/accuracy.py --jobs 2    # writes accuracy.md, accuracy.png and the raw accuracy.json
    python benchmarks/accuracy.py --render-only
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from machine import cpu_name  # noqa: E402
from tvm_unify.data import Task, load_task  # noqa: E402
from tvm_unify.models import get_builtin  # noqa: E402
from tvm_unify.unify.export import unify_metadata  # noqa: E402
from tvm_unify.unify.pipeline import Schedule, train_dense, train_unify  # noqa: E402
from tvm_unify.unify.spec import UnifyConfig, plan_layers  # noqa: E402

HERE = Path(__file__).parent
SPARSITIES = [0.75, 0.9]
METHODS = ["admm", "one-shot+ft", "magnitude"]
QUIET = {"progress": False, "log": lambda _: None}


@dataclass(frozen=True)
class Setup:
    """How one model is benchmarked: data, blocks, seeds and epoch budget."""

    data: str
    blocks: tuple[tuple[int, int], ...]
    seeds: int
    dense_epochs: int
    budget: int
    batch_size: int = 64
    image_size: int | None = None  # square input side for the training run (None: the built-in's own)


MODELS = {
    "digits-cnn": Setup("digits", ((1, 4), (4, 4)), seeds=3, dense_epochs=10, budget=12),
    "resnet18": Setup("digits-rgb", ((1, 4), (4, 4)), seeds=3, dense_epochs=10, budget=6, batch_size=32,
                      image_size=16),
    "mobilenetv2": Setup("digits-rgb", ((1, 4), (4, 4)), seeds=3, dense_epochs=10, budget=6, batch_size=32,
                         image_size=16),
}


@dataclass
class Result:
    model: str
    method: str
    block: tuple[int, int]
    sparsity: float
    seed: int
    accuracy: float
    projected_accuracy: float
    before_projection: float  # accuracy after the last ADMM round (the dense start for the baselines)
    residual: float | None  # ||W - Z|| / ||W|| after the last ADMM round
    satisfied: float | None  # fraction of blocks within tolerance of Z after the last round
    layer_ratio: float
    seconds: float


def method_setup(method: str, block: tuple[int, int], sparsity: float, setup: Setup, seed: int):
    """Config and schedule of one method; every schedule spends ``setup.budget`` epochs."""
    base = Schedule(0, 0, 1, setup.budget, batch_size=setup.batch_size, seed=seed)
    if method == "admm":
        finetune = setup.budget // 3
        rounds = setup.budget - finetune
        schedule = replace(base, admm_rounds=rounds, finetune_epochs=finetune)
        return UnifyConfig(block=block, sparsity=sparsity), schedule
    if method == "dense":  # every block free and none pruned: plain training with the fine-tune schedule
        return UnifyConfig(block=block, sparsity=0.0, unified=0.0), base
    unified = 1.0 if method == "one-shot+ft" else 0.0
    return UnifyConfig(block=block, sparsity=sparsity, unified=unified), base


def layer_ratio(model: torch.nn.Module, config: UnifyConfig) -> float:
    """fp32-dense bits over compressed bits of the constrained layers, measured on the weights."""
    records = unify_metadata(plan_layers(model, config))["layers"]
    return sum(r["dense_bits"] for r in records) / sum(r["storage_bits"] for r in records)


def input_shape(name: str, setup: Setup) -> tuple[int, ...]:
    shape = get_builtin(name).input_shape
    return shape if setup.image_size is None else (*shape[:-2], setup.image_size, setup.image_size)


def task_for(name: str, setup: Setup) -> Task:
    """One copy of each training digit (1,437 images), drawn at the setup's input size."""
    return load_task(setup.data, input_shape(name, setup), copies=1)


def run_seed(name: str, setup: Setup, seed: int) -> tuple[float, list[Result]]:
    """One dense network, then the reference and every (method, block, sparsity) from it (one torch thread)."""
    torch.set_num_threads(1)
    builtin = get_builtin(name)
    task = task_for(name, setup)
    torch.manual_seed(seed)
    start = time.perf_counter()
    dense = builtin.factory()
    dense_acc = train_dense(dense, setup.dense_epochs, data=task,
                            schedule=Schedule(batch_size=setup.batch_size, seed=seed), progress=False)
    print(f"{name} seed {seed}: dense {dense_acc:.4f} after {setup.dense_epochs} epochs, "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    combos = [("dense", (1, 1), 0.0)] + [(m, b, s) for s in SPARSITIES for b in setup.blocks for m in METHODS]
    results = []
    for method, block, sparsity in combos:
        config, schedule = method_setup(method, block, sparsity, setup, seed)
        start = time.perf_counter()
        model = copy.deepcopy(dense)
        rep = train_unify(model, config, schedule, data=task, **QUIET)
        last = rep.rounds[-1] if rep.rounds else None
        results.append(Result(name, method, block, sparsity, seed, rep.final_accuracy, rep.projected_accuracy,
                              last.accuracy if last else rep.dense_accuracy,
                              last.residual.relative if last else None, last.residual.satisfied if last else None,
                              layer_ratio(model, config), time.perf_counter() - start))
        r = results[-1]
        extra = f" residual {r.residual:.3f} satisfied {r.satisfied:.0%}" if last else ""
        print(f"  {method:12s} {block[0]}x{block[1]} sparsity {sparsity:.2f}: accuracy {r.accuracy:.4f} "
              f"(before projection {r.before_projection:.4f}, projected {r.projected_accuracy:.4f}){extra} "
              f"{r.seconds:.0f} s", flush=True)
    return dense_acc, results


def aggregate(results: list[Result]) -> list[dict]:
    """Mean (and spread) over seeds of every (model, method, block, sparsity)."""
    keys = list(dict.fromkeys((r.model, r.method, r.block, r.sparsity) for r in results))
    rows = []
    for key in keys:
        group = [r for r in results if (r.model, r.method, r.block, r.sparsity) == key]
        accs = [r.accuracy for r in group]
        admm = [r for r in group if r.residual is not None]
        rows.append({
            "model": key[0], "method": key[1], "block": key[2], "sparsity": key[3], "seeds": len(group),
            "accuracy": statistics.mean(accs), "spread": (min(accs), max(accs)),
            "projected": statistics.mean(r.projected_accuracy for r in group),
            "before": statistics.mean(r.before_projection for r in group),
            "residual": statistics.mean(r.residual for r in admm) if admm else None,
            "satisfied": statistics.mean(r.satisfied for r in admm) if admm else None,
            "layer_ratio": statistics.mean(r.layer_ratio for r in group),
            "seconds": statistics.mean(r.seconds for r in group),
        })
    return rows


def find(rows: list[dict], model: str, method: str, block=None, sparsity=None) -> dict:
    return next(r for r in rows if r["model"] == model and r["method"] == method
                and (block is None or r["block"] == block) and (sparsity is None or r["sparsity"] == sparsity))


def write_markdown(path: Path, dense: dict[str, list[float]], rows: list[dict], total_s: float, jobs: int,
                   runs: int = 1) -> None:
    s = Schedule()
    lines = [
        "# Accuracy of unified CNNs: ADMM vs one-shot + fine-tune vs magnitude block pruning",
        "",
        (f"Generated by `python benchmarks/accuracy.py --jobs {jobs}` in one run ({total_s / 60:.1f} min) on "
         f"{cpu_name()}, {jobs} (model, seed) job(s) at a time with one torch thread each (times are noisy)."
         if runs == 1 else
         f"Generated by {runs} runs of `python benchmarks/accuracy.py` (`--models`, `--seeds`, `--jobs`), merged "
         f"with `--merge`; the longest took {total_s / 60:.1f} min, on {cpu_name()}, one torch thread per "
         "(model, seed) job (times are noisy: the runs shared the 2 cores with each other and with other work)."),
        "",
        "Budget per model (each method starts from the same dense network and spends the same epochs after it):",
        "",
        "| model | data | input | train images | dense epochs | budget (epochs) | batch | blocks | seeds | "
        "dense accuracy |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, setup in MODELS.items():
        if name in dense:
            shape = "x".join(map(str, input_shape(name, setup)[1:]))
            lines.append(f"| {name} | {setup.data} | {shape} | 1,437 | {setup.dense_epochs} | {setup.budget} | "
                         f"{setup.batch_size} | {', '.join(f'{b[0]}x{b[1]}' for b in setup.blocks)} | {len(dense[name])} | "
                         f"{', '.join(f'{a:.2%}' for a in dense[name])} |")
    missing = [name for name in MODELS if name not in dense]
    if missing:
        lines += ["", f"**Not in this run: {', '.join(missing)}**; this table holds only the models above, with the "
                      "seeds listed (see docs/compression.md for why and what the big CNNs need)."]
    lines += [
        "",
        f"`admm` = 2/3 of the budget in one-epoch rounds (Adam W-step lr {s.admm_lr:g}, rho {s.rho:g} growing "
        f"geometrically to {s.rho_max:g} at the last round, the dual rescaled when rho changes), hard projection, "
        "masked fine-tune for the rest; `one-shot+ft` = hard projection + masked fine-tune; `magnitude` = block "
        "pruning by block energy, no unification, + masked fine-tune; `dense` = the same budget of plain training "
        "(the reference for `vs dense`). The first and last layers stay dense, depthwise convs are skipped. The big "
        "CNNs train on 16x16 digits-rgb images (one random draw per train digit; their layers and weight shapes are "
        "those of the 32x32 built-ins) to fit the run in under two hours on two cores; every model is tested on "
        "the 360 test digits (one digit = 0.28 points).",
        "",
        "`before proj.` = accuracy after the last ADMM round (for the baselines: the dense start); `projected` = "
        "right after the hard projection (BatchNorm statistics re-estimated); `cost` = before - projected; "
        "`residual` = ||W - Z|| / ||W|| and `satisfied` = blocks within 0.1 RMS block norm of Z, after the last round.",
        "",
        "| model | block | sparsity | method | accuracy [min, max] | vs dense | before proj. | projected | cost | "
        "residual | satisfied | compression (layers) | time per run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ref = find(rows, r["model"], "dense")
        is_dense = r["method"] == "dense"
        block = "-" if is_dense else f"{r['block'][0]}x{r['block'][1]}"
        admm = "- | -" if r["residual"] is None else f"{r['residual']:.3f} | {r['satisfied']:.0%}"
        ratio = "1.0x" if is_dense else f"{r['layer_ratio']:.1f}x"
        proj = "- | - | -" if is_dense else (f"{r['before']:.2%} | {r['projected']:.2%} | "
                                             f"{(r['before'] - r['projected']) * 100:+.1f} pt")
        lines.append(
            f"| {r['model']} | {block} | {r['sparsity']:.2f} | {r['method']} | {r['accuracy']:.2%} "
            f"[{r['spread'][0]:.2%}, {r['spread'][1]:.2%}] | {(r['accuracy'] - ref['accuracy']) * 100:+.2f} pt | "
            f"{proj} | {admm} | {ratio} | {r['seconds']:.0f} s |")
    lines += ["", *goal_lines(rows)]
    path.write_text("\n".join(lines) + "\n")


def goal_lines(rows: list[dict]) -> list[str]:
    """The issue's goals, checked against the table."""
    lines = ["## Goals", ""]
    models = list(dict.fromkeys(r["model"] for r in rows))
    gains = []
    for model in models:
        for r in rows:
            if r["model"] == model and r["method"] == "admm" and r["sparsity"] == 0.9:
                other = find(rows, model, "one-shot+ft", r["block"], 0.9)
                gains.append((model, r["block"], (r["accuracy"] - other["accuracy"]) * 100))
    text = ", ".join(f"{m} {b[0]}x{b[1]} {g:+.2f} pt" for m, b, g in gains)
    lines.append(f"- At 0.9, ADMM minus one-shot+ft: {text}. Goal (>= +2 pt on one CNN, never below): "
                 f"{'met' if max(g for *_, g in gains) >= 2 and min(g for *_, g in gains) >= 0 else 'not met'}.")
    drops = []
    for model in models:
        ref = find(rows, model, "dense")["accuracy"]
        for r in rows:
            if r["model"] == model and r["method"] == "admm" and r["sparsity"] == 0.75:
                drops.append((model, r["block"], (ref - r["accuracy"]) * 100))
    text = ", ".join(f"{m} {b[0]}x{b[1]} {d:.2f} pt" for m, b, d in drops)
    lines.append(f"- At 0.75, ADMM below dense: {text}. Goal (<= 1 pt on all three): "
                 f"{'met' if max(d for *_, d in drops) <= 1 else 'not met'}.")
    admm = [r for r in rows if r["method"] == "admm"]
    lines.append(f"- Before the hard projection: residual {min(r['residual'] for r in admm):.3f}-"
                 f"{max(r['residual'] for r in admm):.3f}, satisfied blocks {min(r['satisfied'] for r in admm):.0%}-"
                 f"{max(r['satisfied'] for r in admm):.0%}, projection cost "
                 f"{min((r['before'] - r['projected']) * 100 for r in admm):+.1f} to "
                 f"{max((r['before'] - r['projected']) * 100 for r in admm):+.1f} pt "
                 "(goals: <= 0.05, >= 95%, <= 1 pt).")
    return lines


def plot(path: Path, rows: list[dict]) -> None:
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4.2), squeeze=False)
    colors = {"admm": "tab:blue", "one-shot+ft": "tab:orange", "magnitude": "tab:gray"}
    markers = {(1, 4): "o", (4, 4): "s"}
    for ax, model in zip(axes[0], models):
        for method in METHODS:
            for block in markers:
                pts = sorted((r["sparsity"], r["accuracy"] * 100) for r in rows
                             if r["model"] == model and r["method"] == method and r["block"] == block)
                if pts:
                    ax.plot(*zip(*pts), marker=markers[block], color=colors[method], alpha=0.8,
                            label=f"{method} {block[0]}x{block[1]}")
        ax.axhline(find(rows, model, "dense")["accuracy"] * 100, color="black", linestyle="--", linewidth=1,
                   label="dense, same budget")
        ax.set_xticks(SPARSITIES)
        ax.set_xlabel("fraction of blocks pruned")
        ax.set_ylabel("test accuracy after fine-tuning (%)")
        ax.set_title(model)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run_jobs(names: list[str], jobs: int, raw: Path, seeds: range | None = None
             ) -> tuple[dict[str, list[float]], list[Result], float]:
    """Every (model, seed) of ``names`` (``seeds``, default each model's own) in ``jobs`` processes, largest
    models first so the tail is short; the raw JSON is rewritten after each job, so a killed run keeps
    what finished."""
    work = sorted(((name, seed) for name in names for seed in (seeds or range(MODELS[name].seeds))),
                  key=lambda job: -sum(p.numel() for p in get_builtin(job[0]).factory().parameters()))
    start = time.perf_counter()
    done: dict[tuple[str, int], tuple[float, list[Result]]] = {}
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_seed, name, MODELS[name], seed): (name, seed) for name, seed in work}
        for future in as_completed(futures):
            done[futures[future]] = future.result()
            dense, results = _collect(done, names)
            raw.write_text(json.dumps({"dense_accuracies": dense, "seconds": time.perf_counter() - start,
                                       "jobs": jobs, "results": [asdict(r) for r in results]}, indent=1))
    return (*_collect(done, names), time.perf_counter() - start)


def _collect(done: dict, names: list[str]) -> tuple[dict[str, list[float]], list[Result]]:
    """Finished jobs in table order: model as listed, then seed."""
    dense: dict[str, list[float]] = {}
    results: list[Result] = []
    for key in sorted(done, key=lambda k: (names.index(k[0]), k[1])):
        dense.setdefault(key[0], []).append(done[key][0])
        results += done[key][1]
    return dense, results


def load_raw(paths: list[Path]) -> tuple[dict[str, list[float]], list[Result], float, int, int]:
    """Dense accuracies, results, wall time, jobs and runs of raw files from runs made at the same time:
    the wall time is the longest run's, the jobs their sum (what shared the cores)."""
    saved = [json.loads(p.read_text()) for p in paths]
    dense: dict[str, list[float]] = {}
    for s in saved:
        for name, accs in s["dense_accuracies"].items():
            dense.setdefault(name, []).extend(accs)
    results = [Result(**{**r, "block": tuple(r["block"])}) for s in saved for r in s["results"]]
    return (dense, results, max(s["seconds"] for s in saved), sum(s.get("jobs", 1) for s in saved),
            sum(s.get("runs", 1) for s in saved))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ", ".join(MODELS))
    parser.add_argument("--jobs", type=int, default=1,
                        help="(model, seed) jobs at once, one torch thread each (default 1; at most the core count)")
    parser.add_argument("--seeds", type=int, nargs=2, metavar=("FIRST", "END"),
                        help="run seeds FIRST..END-1 of every model (default: each model's own 0..N-1); "
                             "with --merge, adds seeds to an earlier run")
    parser.add_argument("--out", type=Path, default=HERE / "accuracy.md")
    parser.add_argument("--render-only", action="store_true", help="redo the table and plot from the .json")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                        help="render from these raw files of runs made at the same time (e.g. one per model)")
    args = parser.parse_args()
    raw = args.out.with_suffix(".json")
    if args.render_only or args.merge:
        dense, results, total, jobs, runs = load_raw(args.merge or [raw])
        if args.merge:
            raw.write_text(json.dumps({"dense_accuracies": dense, "seconds": total, "jobs": jobs, "runs": runs,
                                       "results": [asdict(r) for r in results]}, indent=1))
    else:
        jobs, runs = args.jobs, 1
        dense, results, total = run_jobs(args.models.split(","), jobs, raw, args.seeds and range(*args.seeds))
    rows = aggregate(results)
    write_markdown(args.out, dense, rows, total, jobs, runs)
    plot(args.out.with_suffix(".png"), rows)
    print(f"wrote {args.out} and {args.out.with_suffix('.png')} ({total:.0f} s)")


if __name__ == "__main__":
    main()
