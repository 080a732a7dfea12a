"""Dynamic aarch64 instructions per inference on the emulated device (qemu ``max`` CPU, exact counts
between marker syscalls, one thread): dense TVM vs unified fp32 NEON vs unified int8 (NEON without
dotprod, ``sdot``, ``smmla``), for digits-cnn, ResNet-18 and MobileNetV2 at 4x4 blocks / 75% pruned;
writes ``arm.md``, ``arm.json`` and ``arm.png`` next to this script. Every build applies the shipped tuning
records of its target, as ``tvm-unify compile`` does by default (``schedules/a76``: tuned by instruction
count; kernels without records keep the default schedules).

Every build runs on the same input (a held-out sample of the built-in data) and is checked against
PyTorch; int8 builds use activation scales calibrated on 64 training samples. Models are the
trained ``.pt`` files given with ``--model NAME=PATH`` (``tvm-unify unify ...``); a model not given is
a one-shot unified, BatchNorm-calibrated built-in (instruction counts do not depend on training).

Peers on the same counter (``peers/emulated.py``; ``--no-peers`` skips them): ONNX Runtime and LiteRT
(XNNPACK) aarch64 wheels in the emulated root run the same unified model dense, one thread, counted
inside their own library and over the whole call, on qemu ``max`` without SME (the NEON code our builds
run) and with SME (qemu's 256-bit streaming vectors: both pick outer-product kernels when the CPU has them).

    python benchmarks/arm.py [--model digits-cnn=d.pt ...] [--port 9471] [--no-peers]
"""

from __future__ import annotations

import argparse
import bisect
import json
import re
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from peers.emulated import ENGINES as PEERS, count_peer, peer_models
from tvm_unify.compiler import compile_model, compile_module, lower_unified
from tvm_unify.data import default_dataset, load_task
from tvm_unify.device.emulator import start_device
from tvm_unify.frontend import calibrate_act_scales, import_torchscript
from tvm_unify.models import get_builtin
from tvm_unify.pipeline import codegen_target
from tvm_unify.runtime.rpc import DeviceSpec, count_remote, load_remote, run_remote, with_device
from tvm_unify.targets import load_target
from tvm_unify.testing import unified_model
from tvm_unify.torchscript import save_torchscript
from tvm_unify.tuning.records import SHIPPED, records_for

MODELS = ("digits-cnn", "resnet18", "mobilenetv2")
# label -> (preset, compile options); the first is the baseline.
VARIANTS = {
    "dense TVM (a76)": ("a76", {"dense": True}),
    "unified fp32 NEON (a76)": ("a76", {"mode": "fp32"}),
    "unified int8 NEON (arm, no dotprod)": ("arm", {"mode": "int8"}),
    "unified int8 sdot (a76)": ("a76", {"mode": "int8"}),
    "unified int8 smmla (neoverse-v1)": ("neoverse-v1", {"mode": "int8"}),
}
# the peers' emulated CPU -> the label their rows carry. Our builds run on "max" and use NEON only; without
# SME the peers do too (ResNet-18: the same in-library counts as on qemu's cortex-a76); with SME they run
# outer products (one FMOPA: 64 fp32 multiply-adds at qemu's 256-bit streaming vectors; one NEON FMLA: 4).
QEMU_CPU = "max"
PEER_CPUS = {"max,sme=off": "NEON", "max": "SME"}
CALIBRATION_SAMPLES = 64
OUT = Path(__file__).with_suffix("")


def model_file(name: str, given: dict[str, str], tmp: Path) -> tuple[Path, str]:
    """The trained file given for ``name``, else a one-shot unified built-in saved to ``tmp``."""
    if name in given:
        return Path(given[name]), "trained (given)"
    model, _ = unified_model(name)
    path = tmp / f"{name}.pt"
    save_torchscript(model, path, get_builtin(name).input_shape, {"model": name})
    return path, "one-shot unified, BatchNorm calibrated"


def data_for(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A held-out test input and calibration samples from the built-in data set that fits ``shape``."""
    task = load_task(default_dataset(shape), shape)
    x = task.test[0][0].numpy()[None].astype("float32")
    calibration = np.stack([task.train[i][0].numpy()[None] for i in range(CALIBRATION_SAMPLES)]).astype("float32")
    return x, calibration


def measure(name: str, path: Path, spec: DeviceSpec, tmp: Path, peers: bool) -> tuple[list[dict], list[str]]:
    """Our builds' rows, then (``peers``) the peers' rows and the reasons of those that could not run."""
    imported = import_torchscript(path)
    x, calibration = data_for(imported.input_shape)
    with torch.no_grad():
        ref = imported.torch_module(torch.from_numpy(x)).numpy()
    scales = calibrate_act_scales(imported, calibration)  # once: every int8 build shares them
    libraries = []
    for n, (label, (preset, options)) in enumerate(VARIANTS.items()):
        library = tmp / f"{name}-{n}.so"
        start = time.perf_counter()
        if options.get("mode") == "int8":
            target = load_target(preset)
            mod, _ = lower_unified(imported, "int8", scales, target.cores, codegen_target(target))
            compile_module(mod, target, library, imported.input_shape, emit_source=tmp / f"{name}-{n}",
                           records=records_for(SHIPPED, target.name))
        else:
            compile_model(imported, preset, library, **options, emit_source=tmp / f"{name}-{n}")
        print(f"[arm] {name}: {label} built in {time.perf_counter() - start:.0f} s", flush=True)
        libraries.append(library)
    scale = float(np.abs(ref).max())
    rows = []
    for label, library in zip(VARIANTS, libraries):
        def job(session):
            model = load_remote(session, library)
            return run_remote(model, [x]), count_remote(model, [x])

        out, counts = with_device(spec, job)
        rows.append({"model": name, "variant": label, "instructions": counts["kernels"], "total": counts["total"],
                     "rel_err": float(np.abs(out - ref).max()) / scale,
                     "where": where(library, tmp / library.stem / "llvm0.s", counts["blocks"])})
        print(f"[arm] {name}: {label}: {counts['kernels']:,} instructions, {rows[-1]['where']}", flush=True)
    if not peers:
        return rows, []
    peer_rows, skipped = measure_peers(name, path, x, ref, tmp)
    return rows + peer_rows, skipped


def measure_peers(name: str, path: Path, x: np.ndarray, ref: np.ndarray, tmp: Path) -> tuple[list[dict], list[str]]:
    """ONNX Runtime and LiteRT on the model of ``path`` (run dense), counted in the guest on every
    ``PEER_CPUS`` CPU: their rows, and a line for each peer that could not be exported or run."""
    workdir = tmp / f"{name}-peers"
    workdir.mkdir(exist_ok=True)
    models = peer_models(path, name, x, workdir, tmp / "litert-venv.log")
    rows, skipped = [], []
    for engine, label in PEERS.items():
        if isinstance(models[engine], str):
            skipped.append(f"{name}: {label}: {models[engine]}")
            continue
        for cpu, isa in PEER_CPUS.items():
            try:
                counts = count_peer(engine, models[engine], x, ref, cpu)
            except (RuntimeError, subprocess.TimeoutExpired) as err:
                skipped.append(f"{name}: {label} ({isa}): {err}")
                continue
            rows.append({"model": name, "variant": f"{label} {counts['version']} ({isa})", "peer": engine,
                         "qemu_cpu": cpu, "instructions": counts["in_library"], "total": counts["total"],
                         "rel_err": counts["rel_err"], "library": counts["library"], "threads": counts["threads"],
                         "peer_threads_cpu_s": counts["peer_threads_cpu_s"]})
            print(f"[arm] {name}: {rows[-1]['variant']}: {counts['in_library']:,} instructions in "
                  f"{counts['library']}, {counts['total']:,} whole call", flush=True)
    return rows, skipped


def code_ranges(library: Path, asm: Path) -> list[tuple[int, int, str]]:
    """(start, end, kernel) of every function of the library, a parallel-loop body (a local
    ``.L__tvm_parallel_lambda`` without a symbol) under the kernel that launches it. The functions'
    order comes from the emitted assembly, their address ranges from the unwind table (one FDE per
    function, in the same order), anchored at the first function's exported symbol."""
    functions, parent, current = [], {}, None
    for line in asm.read_text().splitlines():
        if match := re.match(r"\s*\.type\s+([^,]+),@function", line):
            functions.append(match.group(1))
            current = match.group(1) if "parallel_lambda" not in match.group(1) else current
        elif (match := re.search(r"(\.L__tvm_parallel_lambda[.\d]*)", line)) and not line.lstrip().startswith("."):
            parent.setdefault(match.group(1), current)
    frames = subprocess.run(["aarch64-linux-gnu-readelf", "--debug-dump=frames", str(library)],
                            capture_output=True, text=True, check=True).stdout
    fdes = sorted((int(a, 16), int(b, 16)) for a, b in re.findall(r"FDE cie=\S+ pc=([0-9a-f]+)\.\.([0-9a-f]+)", frames))
    listing = subprocess.run(["aarch64-linux-gnu-nm", "--defined-only", str(library)],
                             capture_output=True, text=True, check=True).stdout
    first = next(int(f[0], 16) for f in (line.split() for line in listing.splitlines()) if f[-1] == functions[0])
    anchor = next(i for i, (a, _) in enumerate(fdes) if a == first)
    return [(a, b, parent.get(name, name)) for (a, b), name in zip(fdes[anchor:], functions)]


def kind_of(symbol: str) -> str:
    """What a kernel computes, in the categories of the report."""
    name = symbol.removeprefix("__tvm_ffi_")
    if name.startswith("unified") or name.startswith("free_"):
        return "unified kernels"
    if "planar" in name:
        return "planar kernels (stem, depthwise)"
    if "conv2d" in name or "matmul" in name:
        return "dense conv/linear (stem, depthwise, classifier)"
    return "other ops (pooling, adds, reshapes)"


def where(library: Path, asm: Path, blocks: list[list[int]]) -> dict[str, int]:
    """The model code's instructions per kind of kernel (each executed block in its function's range)."""
    ranges = code_ranges(library, asm)
    starts = [a for a, _, _ in ranges]
    shares: dict[str, int] = {}
    for address, count in blocks:
        i = bisect.bisect_right(starts, address) - 1
        kind = kind_of(ranges[i][2]) if i >= 0 and address < ranges[i][1] else "runtime glue"
        shares[kind] = shares.get(kind, 0) + count
    return shares


def table(rows: list[dict]) -> list[str]:
    lines = ["| model | build | instructions / inference (model code; peers: in library) | vs dense TVM | "
             "vs unified fp32 | whole call (runtime incl.) | max error / max logit |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        same = [r for r in rows if r["model"] == row["model"]]
        dense, fp32 = same[0]["instructions"], same[1]["instructions"]
        lines.append(f"| {row['model']} | {row['variant']} | {row['instructions']:,} | "
                     f"{dense / row['instructions']:.2f}x | {fp32 / row['instructions']:.2f}x | {row['total']:,} | "
                     f"{row['rel_err']:.4f} |")
    return lines


def breakdown(rows: list[dict]) -> list[str]:
    """Where each build's model-code instructions go, as shares (our builds: the peers have no symbols here)."""
    rows = [row for row in rows if "where" in row]
    kinds = sorted({kind for row in rows for kind in row["where"]})
    lines = ["| model | build | " + " | ".join(kinds) + " |", "|---|---|" + "---:|" * len(kinds)]
    for row in rows:
        total = sum(row["where"].values())
        lines.append(f"| {row['model']} | {row['variant']} | " + " | ".join(
            f"{row['where'].get(kind, 0):,} ({row['where'].get(kind, 0) / total:.0%})" for kind in kinds) + " |")
    return lines


def against_peers(rows: list[dict]) -> list[str]:
    """Per model: our best unified build and unified fp32 against the best peer without SME, and our best
    against the best peer with SME; ratios are the peer's instructions over ours (>1: ours runs fewer)."""
    lines = ["| model | ours | peer | ours: model code | peer: in library | ratio | ours: whole call | "
             "peer: whole call | ratio |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for model in dict.fromkeys(r["model"] for r in rows):
        same = [r for r in rows if r["model"] == model]
        unified = [r for r in same if "peer" not in r and r["variant"].startswith("unified")]
        best, fp32 = min(unified, key=lambda r: r["instructions"]), same[1]
        for ours, isa in ((best, "NEON"), *([(fp32, "NEON")] if fp32 is not best else []), (best, "SME")):
            peers = [r for r in same if r.get("peer") and r["variant"].endswith(f"({isa})")]
            if not peers:
                continue
            peer = min(peers, key=lambda r: r["total"])
            lines.append(f"| {model} | {ours['variant']} | {peer['variant']} | {ours['instructions']:,} | "
                         f"{peer['instructions']:,} | {peer['instructions'] / ours['instructions']:.2f}x | "
                         f"{ours['total']:,} | {peer['total']:,} | {peer['total'] / ours['total']:.2f}x |")
    return lines


def chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    labels = list(dict.fromkeys(r["variant"] for r in rows))
    fig, ax = plt.subplots(figsize=(11, 5))
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        values = [next((r["instructions"] for r in rows if r["model"] == m and r["variant"] == label), np.nan)
                  for m in models]
        ax.bar(np.arange(len(models)) + i * width, values, width, label=label,
               hatch="//" if i >= len(VARIANTS) else None)  # the peers
    ax.set_xticks(np.arange(len(models)) + width * (len(labels) - 1) / 2, models)
    ax.set_yscale("log")
    ax.set_ylabel("aarch64 instructions per inference\n(model code; peers: in library)")
    ax.set_title("Emulated aarch64 (qemu max), exact counts, 4x4 blocks 75% pruned")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def peer_section(rows: list[dict], skipped: list[str]) -> list[str]:
    """The report's peer comparison (nothing when the run skipped the peers)."""
    if not any("peer" in r for r in rows) and not skipped:
        return []
    return ["## Against the peers", "",
            "ONNX Runtime and LiteRT (XNNPACK) aarch64 wheels in the emulated root, the same unified model run dense "
            "(ONNX: torch.onnx dynamo export; TFLite: litert-torch), one thread, one inference counted by the same "
            "plugin: \"in library\" inside the peer's own shared object (ONNX Runtime's pybind module, LiteRT's "
            "`libpywrap_litert_common.so` with XNNPACK), \"whole call\" the calling thread's whole call (binding, "
            "input and output copies). NEON: qemu `max` without SME (`max,sme=off`; our builds use NEON only); "
            "SME: qemu `max` with its SME (256-bit streaming vectors; an SME outer product does 16x the "
            "multiply-adds of a NEON one, so these counts compare work less directly). Ratios: the peer's "
            "instructions over ours; the peer is the one with the fewest whole-call instructions.", "",
            *against_peers(rows), "",
            *([f"Not measured: {line}" for line in skipped] + [""] if skipped else [])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], help="NAME=PATH.pt of a trained model")
    parser.add_argument("--only", action="append", choices=MODELS, help="measure only these models")
    parser.add_argument("--port", type=int, default=9472)
    parser.add_argument("--no-peers", action="store_true", help="skip ONNX Runtime and LiteRT on the device")
    args = parser.parse_args()
    given = dict(item.split("=", 1) for item in args.model)
    state = start_device(args.port, qemu_cpu=QEMU_CPU)
    spec = DeviceSpec(state.host, state.port)
    rows, skipped, sources = [], [], {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or MODELS:
            path, sources[name] = model_file(name, given, Path(tmp))
            measured, missing = measure(name, path, spec, Path(tmp), not args.no_peers)
            rows.extend(measured)
            skipped.extend(missing)
    OUT.with_suffix(".json").write_text(json.dumps({"rows": rows, "models": sources, "peers_skipped": skipped},
                                                   indent=1))
    chart(rows, OUT.with_suffix(".png"))
    lines = ["# Unified kernels on aarch64: instructions per inference (emulated device)", "",
             "Exact dynamic aarch64 instruction counts of one inference (`tvm-unify bench --count`: qemu user mode, "
             "`--cpu max`, counted between marker syscalls, one thread), 4x4 blocks, 75% of the blocks pruned, the rest "
             "unified. \"model code\" counts the instructions executed inside the compiled library (all kernels); "
             "\"whole call\" adds the TVM runtime around them. Every build applies its target's shipped tuning records, "
             "as `tvm-unify compile` does by default (`schedules/a76`, tuned by instruction count: dense MobileNetV2 "
             "and digits-cnn, the planar convs, the unified layers; kernels without records keep the default "
             "schedules, e.g. dense ResNet-18's). int8 builds: activation scales calibrated on "
             f"{CALIBRATION_SAMPLES} training samples of the built-in data; error against PyTorch on a held-out sample. "
             f"Models: {', '.join(f'{k}: {v}' for k, v in sources.items())}. Run time "
             f"{time.perf_counter() - start:.0f} s. Produced by `python benchmarks/arm.py`.", "", *table(rows), "",
             *peer_section(rows, skipped),
             "## Where the instructions go", "",
             "Model-code instructions per kind of kernel (each executed code block attributed to the library symbol "
             "it lies in: the counting plugin's per-block histogram):", "", *breakdown(rows), ""]
    OUT.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
