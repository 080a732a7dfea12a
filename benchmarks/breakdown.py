"""Where the time of a unified model goes at 32x32 and at 224x224: per-kernel host time of the unified
and the dense build (75%, 4x4 blocks, BatchNorm-calibrated weights), grouped into unified kernels,
dense convolutions/matmuls (stem, depthwise, classifier: what unification leaves dense), other
kernels, and the VM's own work (allocation, shape checks). One run, one machine; ratios matter.

    python benchmarks/breakdown.py [--models mobilenetv2-224 ...] [--threads 2] [--runs 10]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import tvm
from tvm import relax

from tvm_unify.compiler import compile_model
from tvm_unify.models import get_builtin
from tvm_unify.runtime.profile import KernelTime, format_breakdown, kernel_breakdown
from tvm_unify.testing import unified_model
from tvm_unify.torchscript import save_torchscript
from machine import cpu_name

MODELS = ("mobilenetv2", "mobilenetv2-224", "resnet18", "resnet18-224")
GROUPS = ("unified kernels", "dense conv/matmul", "other kernels", "VM runtime")


def group_of(name: str) -> str:
    """A kernel's group by its name: the lowering names unified and free-block kernels, TVM names fused
    ops after their first op, the VM's builtins start with ``vm.``."""
    if name.startswith(("unified_", "free_")):
        return "unified kernels"
    if name.startswith("vm."):
        return "VM runtime"
    if "conv2d" in name or "matmul" in name:
        return "dense conv/matmul"
    return "other kernels"


def profile(name: str, dense: bool, tmp: Path, runs: int) -> list[KernelTime]:
    model, _ = unified_model(name)
    shape = get_builtin(name).input_shape
    save_torchscript(model, tmp / f"{name}.pt", shape)
    so = tmp / f"{name}-{'dense' if dense else 'unified'}.so"
    compile_model(tmp / f"{name}.pt", "host", so, dense=dense)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(so)), tvm.cpu())
    x = tvm.runtime.tensor(np.random.default_rng(0).standard_normal(shape).astype("float32"))
    return kernel_breakdown(vm, [x], runs)


def grouped(times: list[KernelTime]) -> dict[str, float]:
    totals = dict.fromkeys(GROUPS, 0.0)
    for k in times:
        totals[group_of(k.name)] += k.ms
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".md")))
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    lines = ["# Where the time goes: per-kernel host time, unified vs dense", "",
             f"Machine: {cpu_name()}, {os.cpu_count()} cores, {args.threads} TVM threads; median of {args.runs} "
             "runs per kernel, timed through the Relax VM's instrument hook (`tvm-unify bench --local --profile`). "
             "Unified 4x4 blocks at 75% sparsity, BatchNorm-calibrated weights, batch 1. Produced by "
             "`python benchmarks/breakdown.py`.", "",
             "| model | build | " + " | ".join(f"{g} ms" for g in GROUPS) + " | total ms |",
             "|---|---|" + "---|" * (len(GROUPS) + 1)]
    details = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for dense in (True, False):
                times = profile(name, dense, Path(tmp), args.runs)
                groups = grouped(times)
                build = "dense" if dense else "unified"
                lines.append(f"| {name} | {build} | " + " | ".join(f"{groups[g]:.3f}" for g in GROUPS)
                             + f" | {sum(groups.values()):.3f} |")
                details += ["", f"## {name}, {build}", "", "```", format_breakdown(times, top=15), "```"]
                print(lines[-1], flush=True)
    Path(args.out).write_text("\n".join(lines + details) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
