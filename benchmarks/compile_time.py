"""How long `tvm-unify compile` takes for every built-in, unified and dense, and where the time goes.

Each compile is the CLI a user runs (`tvm-unify compile MODEL.pt -o MODEL.so`, host target, shipped
records), in a fresh process, so the wall time includes Python start-up and imports; the stages are the
ones the compile prints (import, lower and its kernel generation, schedule, codegen, export). Unified
models are one-shot projections of the BatchNorm-calibrated built-ins at 75% sparsity
(`tvm_unify.testing.unified_model`); the compile time depends on the block pattern's shape, not on
training. One compile at a time, nothing else started by this script.

    python benchmarks/compile_time.py [--models resnet18 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = Path.home() / ".cache" / "tvm-unify" / "compile-time"
RESULTS = ROOT / "benchmarks" / "compile_time.json"
# (built-in, block) pairs: every built-in with 4x4 blocks, and MobileNetV2 with 1x4 blocks too (the
# slowest pattern to lower: four times the blocks of 4x4)
MODELS = (("digits-cnn", "4x4"), ("mlp", "4x4"), ("resnet18", "4x4"), ("mobilenetv2", "4x4"),
          ("mobilenetv2", "1x4"), ("resnet18-224", "4x4"), ("mobilenetv2-224", "4x4"))
STAGES = re.compile(r"\(input [^;]*; (.*)\)\s*$")
LIMIT = 30.0  # seconds: the budget for a unified compile on this machine


def model_file(name: str, block: str) -> Path:
    """The TorchScript file of one row: the unified projection (its dense build reads the same file)."""
    import torch

    from tvm_unify.models import get_builtin
    from tvm_unify.testing import unified_model
    from tvm_unify.torchscript import save_torchscript

    path = OUT / f"{name}-{block}.pt"
    if not path.exists():
        OUT.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        rows, cols = (int(v) for v in block.split("x"))
        model, _ = unified_model(name, (rows, cols))
        save_torchscript(model, path, get_builtin(name).input_shape, {"model": name})
    return path


def compile_once(path: Path, dense: bool) -> dict:
    """Wall seconds of one `tvm-unify compile` process and the stage timings it printed."""
    command = [sys.executable, "-m", "tvm_unify", "compile", str(path), "-o",
               str(path.with_suffix(".dense.so" if dense else ".so"))] + (["--dense"] if dense else [])
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    line = next(line for line in done.stdout.splitlines() if line.startswith("wrote "))
    stages = {}
    for part in STAGES.search(line).group(1).split(", "):
        stage, seconds = part.rsplit(" ", 1)
        stages[stage] = float(seconds.rstrip("s"))
    return {"wall": wall, "stages": stages}


def write_report(results: dict) -> None:
    stage_names = list(dict.fromkeys(s for row in results["rows"] for s in row["stages"]))
    lines = ["# Compile time: `tvm-unify compile` per built-in", "",
             f"Machine: {results['cpu']}, {os.cpu_count()} cores; load average {results['load'][0]:.2f} before, "
             f"{results['load'][1]:.2f} after. Host target, shipped records, one compile process at a time; wall "
             "time includes Python start-up and imports. Unified = one-shot projection at 75% sparsity. Produced "
             "by `python benchmarks/compile_time.py`.", "",
             "| model | block | build | wall s | " + " | ".join(f"{s} s" for s in stage_names) + " |",
             "|---|---|---|---:|" + "---:|" * len(stage_names)]
    for row in results["rows"]:
        cells = [f"{row['stages'].get(s, 0):.1f}" if s in row["stages"] else "-" for s in stage_names]
        lines.append(f"| {row['model']} | {row['block']} | {row['build']} | {row['wall']:.1f} | " + " | ".join(cells)
                     + " |")
    unified = [r for r in results["rows"] if r["build"] == "unified"]
    slowest = max(unified, key=lambda r: r["wall"])
    lines += ["", f"Slowest unified compile: {slowest['model']} {slowest['block']}, {slowest['wall']:.1f} s "
              f"({'within' if slowest['wall'] < LIMIT else 'over'} the {LIMIT:.0f} s budget)."]
    (ROOT / "benchmarks" / "compile_time.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", help="only these built-ins")
    args = parser.parse_args()
    from machine import cpu_name

    load_before = os.getloadavg()[0]
    rows = []
    for name, block in MODELS:
        if args.models and name not in args.models:
            continue
        for dense in (False, True):
            if dense and block != "4x4":
                continue  # the dense build ignores the block pattern
            timing = compile_once(model_file(name, block), dense)
            row = {"model": name, "block": block, "build": "dense" if dense else "unified", **timing}
            print(json.dumps(row), flush=True)
            rows.append(row)
    results = {"cpu": cpu_name(), "load": [load_before, os.getloadavg()[0]], "rows": rows}
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    write_report(results)


if __name__ == "__main__":
    main()
