"""Unified kernels vs dense TVM vs PyTorch eager, on the host, in one run; writes .md + .png.

Single layers (ResNet-18 3x3 convs, MobileNetV2 1x1 convs, a 4096x4096 linear at batch 1) and whole
models (ResNet-18, MobileNetV2 at 32x32) at several sparsities, batch 1, the same thread count for
everyone. Weights: BatchNorm-calibrated, projected to unified 4x4 blocks (keep signs, mean |w| per
block, prune the lowest-energy blocks). Dense TVM is the untuned default build (``compiler.build``:
the project's hand-written default schedules). Every time is the minimum over interleaved rounds (the
host is shared and noisy); ratios are taken within one run.

    python benchmarks/unified_kernels.py [--threads 2] [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

import numpy as np
import torch
import tvm
from torch import nn
from tvm import relax

from tvm_unify.models.calibration import calibrate_batchnorm
from tvm_unify.compiler import lower_unified
from tvm_unify.pipeline import build, codegen_target
from tvm_unify.models import get_builtin
from tvm_unify.pipeline import schedule_default
from tvm_unify.targets import load_target
from tvm_unify.testing import import_model, torch_seconds, unify_model

BLOCK = (4, 4)
BREAKDOWN_SPARSITY = 0.75
SAMPLES = 20  # single calls per round; every reported time is the minimum over rounds x samples
IDLE = 0.2
RESNET_CONVS = [(64, 64, 32, 1), (128, 128, 16, 1), (256, 256, 8, 1), (512, 512, 4, 1), (128, 256, 16, 2)]
MOBILENET_1X1 = [(16, 96, 32), (96, 24, 32), (24, 144, 32), (192, 64, 8), (384, 96, 8), (960, 320, 4),
                 (320, 1280, 4)]


@dataclass
class Row:
    name: str
    times: dict[str, float] = field(default_factory=dict)  # variant -> seconds
    extra: dict[str, str] = field(default_factory=dict)


class Compiled:
    """A Relax module built for the host, callable on one input."""

    def __init__(self, mod: tvm.IRModule, x: np.ndarray) -> None:
        self.executable = build(mod, load_target("host"))
        self.vm = relax.VirtualMachine(self.executable, tvm.cpu())
        self.x = tvm.runtime.tensor(x)

    def __call__(self) -> np.ndarray:
        return self.vm["main"](self.x).numpy()

    def seconds(self, samples: int) -> float:
        evaluator = self.vm.time_evaluator("main", tvm.cpu(), number=1, repeat=samples)
        return min(evaluator(self.x).results)

    def so_bytes(self) -> int:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m.so"
            self.executable.export_library(str(path))
            return path.stat().st_size


def compare(model: nn.Module, input_shape: tuple[int, ...], tmp: Path, rounds: int,
            modes=("fp32", "int8"), dense: Compiled | None = None
            ) -> tuple[dict[str, float], dict[str, Compiled], list]:
    """Times of torch, dense TVM and unified TVM (each mode) for one model, interleaved."""
    imported = import_model(model, input_shape, tmp)
    x = np.random.default_rng(0).standard_normal(input_shape).astype("float32")
    builds = {"dense TVM": dense or Compiled(imported.mod, x)}
    report = []
    for mode in modes:
        mod, report = lower_unified(imported, mode, tasks=load_target("host").cores)
        builds[f"unified {mode}"] = Compiled(mod, x)
    times: dict[str, float] = {k: float("inf") for k in ["PyTorch", *builds]}
    for _ in range(rounds):
        time.sleep(IDLE)  # TVM's pool threads spin for a while after a run; let them sleep first
        times["PyTorch"] = min(times["PyTorch"], torch_seconds(model, x, SAMPLES, torch.get_num_threads()))
        for name, compiled in builds.items():
            times[name] = min(times[name], compiled.seconds(SAMPLES))
    return times, builds, report


def layer_rows(tmp: Path, rounds: int, sparsity: float) -> list[Row]:
    rows = []
    cases = [(f"resnet conv3x3 {ci}->{co} @{hw} s{s}", nn.Conv2d(ci, co, 3, s, 1, bias=False), (1, ci, hw, hw))
             for ci, co, hw, s in RESNET_CONVS]
    cases += [(f"mbv2 conv1x1 {ci}->{co} @{hw}", nn.Conv2d(ci, co, 1, bias=False), (1, ci, hw, hw))
              for ci, co, hw in MOBILENET_1X1]
    cases += [("linear 4096x4096 batch 1", nn.Linear(4096, 4096, bias=False), (1, 4096))]
    for name, layer, shape in cases:
        torch.manual_seed(0)
        layer = layer.eval()
        unify_model_single(layer, sparsity)
        times, builds, report = compare(layer, shape, tmp, rounds)
        entry = report[0]
        rows.append(Row(name, times, {"KiB dense": f"{entry.bytes_dense / 1024:.0f}",
                                      "KiB unified": f"{entry.bytes_after / 1024:.0f}",
                                      "ELL pad": f"{entry.padding:.0%}"}))
        print(f"  {name}: " + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in times.items()), flush=True)
    return rows


def unify_model_single(layer: nn.Module, sparsity: float) -> None:
    wrapper = nn.Sequential(nn.Identity(), layer)  # unify_model skips a 3-channel stem; this is not one
    names = unify_model(wrapper, BLOCK, sparsity)
    assert names == ["1"], f"layer not unified: {layer}"


def model_rows(tmp: Path, rounds: int, sparsities: list[float],
               breakdowns: dict[str, dict[str, dict[str, float]]]) -> list[Row]:
    rows = []
    for name in ("resnet18", "mobilenetv2"):
        builtin = get_builtin(name)
        dense_model = calibrate_batchnorm(builtin.factory(), builtin.input_shape)
        x = np.random.default_rng(0).standard_normal(builtin.input_shape).astype("float32")
        dense_build = Compiled(import_model(dense_model, builtin.input_shape, tmp).mod, x)
        dense_so = dense_build.so_bytes()
        for sparsity in sparsities:
            model = calibrate_batchnorm(builtin.factory(), builtin.input_shape)
            unify_model(model, BLOCK, sparsity)
            model = calibrate_batchnorm(model, builtin.input_shape)
            times, builds, report = compare(model, builtin.input_shape, tmp, rounds, dense=dense_build)
            if sparsity == BREAKDOWN_SPARSITY:
                imported = import_model(model, builtin.input_shape, tmp)
                breakdowns[name] = {"dense TVM": kernel_breakdown(imported.mod, rounds),
                                    "unified fp32": kernel_breakdown(
                                        lower_unified(imported, "fp32", tasks=load_target("host").cores)[0], rounds)}
            agree, err = int8_accuracy(model, builds["unified fp32"], builds["unified int8"], builtin.input_shape)
            lowered = [e for e in report if e.lowered]
            rows.append(Row(f"{name} sparsity {sparsity}", times, {
                "layers lowered": f"{len(lowered)}/{len(report)}",
                ".so dense MiB": f"{dense_so / 2**20:.2f}",
                ".so unified MiB": f"{builds['unified fp32'].so_bytes() / 2**20:.2f}",
                "int8 top-1 agree": f"{agree:.0%}", "int8 rel err": f"{err:.3f}"}))
            print(f"  {rows[-1].name}: " + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in times.items())
                  + f" {rows[-1].extra}", flush=True)
    return rows


def kernel_breakdown(mod: tvm.IRModule, rounds: int) -> dict[str, float]:
    """Where the time goes: every kernel of the built model timed alone on its real constants and random
    activations, summed by kind (unified / dense conv / other)."""
    target = codegen_target(load_target("host"))
    mod = schedule_default(mod, target)
    totals: dict[str, float] = {}
    call_tir = tvm.ir.Op.get("relax.call_tir")
    rng = np.random.default_rng(0)
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            call = binding.value
            if not isinstance(call, relax.Call) or call.op != call_tir:
                continue
            gvar, args = call.args[0], list(call.args[1].fields)
            lib = tvm.compile(mod[gvar].with_attr("global_symbol", "main"), target=target).jit()
            tensors = [tvm.runtime.tensor(a.value.numpy()) if isinstance(a, tvm.ir.GenericConst) else
                       tvm.runtime.tensor(rng.standard_normal(_shape(a.ty)).astype(str(a.ty.dtype))) for a in args]
            tensors.append(tvm.runtime.tensor(np.zeros(_shape(call.ty), dtype=str(call.ty.dtype))))
            evaluator = lib.time_evaluator("main", tvm.cpu(), number=1, repeat=SAMPLES * rounds)
            seconds = min(evaluator(*tensors).results)
            name = gvar.name_hint
            kind = ("unified kernels" if name.startswith("unified_") else
                    "dense conv2d" if "conv2d" in name else "dense matmul" if "matmul" in name else "other ops")
            totals[kind] = totals.get(kind, 0.0) + seconds
    return totals


def _shape(ty) -> tuple[int, ...]:
    return tuple(int(d) for d in ty.shape.values)


def int8_accuracy(model: nn.Module, fp32: Compiled, int8: Compiled, shape, samples: int = 16):
    """Top-1 agreement of the int8 build with PyTorch fp32, and the mean max-abs error / output scale."""
    agree, errs = 0, []
    rng = np.random.default_rng(7)
    for _ in range(samples):
        x = rng.standard_normal(shape).astype("float32")
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        int8.x = tvm.runtime.tensor(x)
        out = int8()
        agree += int(out.argmax() == ref.argmax())
        errs.append(np.abs(out - ref).max() / np.abs(ref).max())
    return agree / samples, float(np.mean(errs))


def write_markdown(path: Path, layer_sections: dict[float, list[Row]], models: list[Row],
                   breakdowns: dict[str, dict[str, dict[str, float]]], threads: int, seconds: float) -> None:
    variants = ["PyTorch", "dense TVM", "unified fp32", "unified int8"]
    lines = [
        "# Unified kernels vs dense TVM vs PyTorch (host)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other jobs "
        f"(noisy: every time is the minimum over single calls in interleaved rounds), {threads} threads for TVM, "
        f"the better of 1 and {threads} threads for PyTorch, "
        f"batch 1, fp32 input. TVM target: host LLVM with this CPU's features "
        f"({tvm.target.codegen.llvm_get_system_cpu()}). torch {torch.__version__}, TVM {tvm.__version__}. "
        f"Blocks {BLOCK[0]}x{BLOCK[1]} (tap layout). Dense TVM = the untuned default build (project's "
        f"hand-written default schedules); no meta-schedule tuning in this run. Run time {seconds:.0f} s.",
        "",
        "Produced by `python benchmarks/unified_kernels.py`. Speed-ups are PyTorch time / variant time.",
        "",
    ]

    def table(rows: list[Row]) -> list[str]:
        extras = list(rows[0].extra)
        head = ("| layer | " + " | ".join(f"{v} ms" for v in variants)
                + " | fp32 vs PyTorch | fp32 vs dense TVM | " + " | ".join(extras) + " |")
        out = [head, "|" + "---|" * (head.count("|") - 1)]
        for r in rows:
            t = r.times
            cells = [f"{t[v] * 1e3:.3f}" for v in variants]
            out.append(f"| {r.name} | " + " | ".join(cells) + f" | {t['PyTorch'] / t['unified fp32']:.1f}x | "
                       f"{t['dense TVM'] / t['unified fp32']:.1f}x | " + " | ".join(r.extra.values()) + " |")
        return out

    lines += ["## Whole models (32x32 input)", ""] + table(models) + [""]
    lines += [f"## Where the time goes (sparsity {BREAKDOWN_SPARSITY}: each kernel of the built model timed "
              "alone, ms, summed by kind)", "", "| model | build | unified kernels | dense conv2d | dense matmul "
              "| other ops |", "|---|---|---|---|---|---|"]
    for model, by_build in breakdowns.items():
        for build_name, kinds in by_build.items():
            cells = [f"{kinds.get(k, 0.0) * 1e3:.3f}" for k in ("unified kernels", "dense conv2d", "dense matmul",
                                                              "other ops")]
            lines.append(f"| {model} | {build_name} | " + " | ".join(cells) + " |")
    lines.append("")
    for sparsity, rows in layer_sections.items():
        lines += [f"## Single layers, sparsity {sparsity}", ""] + table(rows) + [""]
    path.write_text("\n".join(lines) + "\n")


def write_plot(path: Path, layer_rows_: list[Row], models: list[Row]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = models + layer_rows_
    variants = ["dense TVM", "unified fp32", "unified int8"]
    fig, ax = plt.subplots(figsize=(11, 0.38 * len(rows) + 1.5))
    ys = np.arange(len(rows))
    for i, v in enumerate(variants):
        ax.barh(ys + (i - 1) * 0.27, [r.times["PyTorch"] / r.times[v] for r in rows], height=0.27, label=v)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_yticks(ys, [r.name for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("speed-up over PyTorch eager (log scale, >1 is faster)")
    ax.set_title("Unified 4x4 blocks vs dense TVM, host, batch 1")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one sparsity, fewer rounds (smoke test)")
    parser.add_argument("--out", default=str(Path(__file__).with_suffix("")))
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    sparsities = [0.75] if args.quick else [0.5, 0.75, 0.9]
    rounds = 2 if args.quick else args.rounds
    with tempfile.TemporaryDirectory() as tmp:
        print("whole models", flush=True)
        breakdowns: dict[str, dict[str, dict[str, float]]] = {}
        models = model_rows(Path(tmp), rounds, sparsities, breakdowns)
        print("single layers", flush=True)
        layers = {s: layer_rows(Path(tmp), rounds, s) for s in ([0.75] if args.quick else [0.75, 0.9])}
    out = Path(args.out)
    write_markdown(out.with_suffix(".md"), layers, models, breakdowns, args.threads, time.perf_counter() - start)
    write_plot(out.with_suffix(".png"), layers[0.75], models)
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
