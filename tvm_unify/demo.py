"""``tvm-unify demo``: the main job end to end on a built-in model, with a report that shows what
unification bought.

Train the built-in model on its built-in data (dense phase, exported as the dense model), unify it with
ADMM (4x4 blocks, 75% pruned, the rest unified), compile both for the host and for ``arm`` (cross-
compiled aarch64), run the host builds and check them against PyTorch, run the arm builds on the
emulated aarch64 device over RPC (checked, and counted in exact instructions), time the best installed
peer runtime on the same unified model, and print dense vs unified side by side (``demo_report.py``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .compiler import compile_model
from .demo_report import Build, Comparison, format_comparison, write_comparison
from .errors import UserError
from .frontend import ImportedModel, import_torchscript
from .passes import report_table
from .runtime.bench import BenchOptions, BenchResult, bench_local
from .runtime.local import library_arch

TOLERANCE = 1e-4
STEPS = 6
VARIANTS = ("dense", "unified")


def run_demo(model: str = "digits-cnn", workdir: str | Path = "demo-out", epochs: int = 12,
             device: bool = True) -> Comparison:
    """Run the demo and print its report; raises UserError if a build disagrees with PyTorch."""
    from .unify import UnifyConfig, unify_builtin
    from .unify.inspect import format_summary, summarize

    out = Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    models = {variant: out / f"{model}-{variant}.pt" for variant in VARIANTS}
    print(f"[1/{STEPS}] train built-in {model} on its built-in data ({epochs} epochs in all), then unify it with "
          f"ADMM (4x4 blocks, 75% pruned) -> {models['dense']}, {models['unified']}")
    trained, _ = unify_builtin(model, models["unified"], UnifyConfig(block=(4, 4), sparsity=0.75), epochs=epochs,
                               dense_output=models["dense"])
    print(f"accuracy on {trained.data}: dense {trained.dense_accuracy:.2%}, unified {trained.final_accuracy:.2%} "
          f"({trained.seconds:.0f} s of unification)")
    summary = summarize(models["unified"])
    print(format_summary(summary))

    imported = {variant: import_torchscript(path) for variant, path in models.items()}
    libraries = _compile_all(model, imported, out)
    x = np.random.default_rng(0).standard_normal(imported["unified"].input_shape).astype("float32")
    references = {variant: _torch_output(imported[variant], x) for variant in VARIANTS}
    host = {variant: _check_on_host(libraries[variant, "host"], x, references[variant]) for variant in VARIANTS}
    print(f"[4/{STEPS}] host builds match PyTorch (tolerance {TOLERANCE:g}); latency dense "
          f"{host['dense'].timing.median_ms:.3f} ms, unified {host['unified'].timing.median_ms:.3f} ms, "
          f"PyTorch eager {_torch_ms(imported['unified'], x):.3f} ms")
    counts = {}
    if device:
        print(f"[5/{STEPS}] arm builds on the emulated aarch64 device")
        remote = run_on_emulated_device(out, host, {v: libraries[v, "arm"] for v in VARIANTS}, x, references)
        counts = {variant: result.instructions for variant, result in remote.items()}
    else:
        print(f"[5/{STEPS}] skipped the emulated device (--no-device)")
    accuracy = {"dense": trained.dense_accuracy, "unified": trained.final_accuracy}
    weight_bits = {"dense": summary.model_dense_bits, "unified": summary.model_bits}
    builds = [Build(variant, accuracy[variant], weight_bits[variant] / 8 / 1024,
                    libraries[variant, "host"].stat().st_size / 1024, host[variant].timing.median_ms,
                    counts.get(variant)) for variant in VARIANTS]
    comparison = Comparison(model, *builds, peers=_peers(imported["unified"], x, out))
    print(f"[6/{STEPS}] dense vs unified")
    print(format_comparison(comparison))
    written = write_comparison(comparison, out)
    print(f"wrote {', '.join(str(p) for p in written)}")
    print("demo OK")
    return comparison


def _compile_all(model: str, imported: dict[str, ImportedModel], out: Path) -> dict[tuple[str, str], Path]:
    """Every variant for the host and for ``arm`` (lowered per target: kernels fit its core count)."""
    libraries = {}
    for step, target in [(2, "host"), (3, "arm")]:
        for variant in VARIANTS:
            so_path = out / f"{model}-{variant}-{target}.so"
            result = compile_model(imported[variant], target, so_path, dense=variant == "dense")
            libraries[variant, target] = so_path
            print(f"[{step}/{STEPS}] compiled {variant} for {target} -> {so_path} ({library_arch(so_path)}, "
                  f"{so_path.stat().st_size / 1024:.0f} KiB, {sum(result.timings.values()):.1f} s)")
            if target == "host" and variant == "unified":
                print(report_table(result.report))
    return libraries


def _torch_output(imported: ImportedModel, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return imported.torch_module(torch.from_numpy(x)).numpy()


def _check_on_host(library: Path, x: np.ndarray, reference: np.ndarray) -> BenchResult:
    """Time the host build and check it against PyTorch."""
    result = bench_local(library, [x], reference, BenchOptions(repeat=20, rtol=TOLERANCE))
    if not result.within_tolerance:
        raise UserError(f"{library.name} disagrees with PyTorch: max abs error {result.max_abs_err:.3g}")
    return result


def run_on_emulated_device(out: Path, host: dict[str, BenchResult], arm: dict[str, Path], x: np.ndarray,
                           references: dict[str, np.ndarray]) -> dict[str, BenchResult]:
    """Run each arm build on the emulated aarch64 device over RPC, check it against PyTorch, and report
    its latency and exact instruction count next to the host measurements (``device-report.md`` + PNG +
    JSON in ``out``). The device is started on a free loopback port and stopped again, whatever happens.
    """
    from .device.emulator import start_device, stop_device
    from .device.procs import free_port
    from .runtime.bench import EMULATED_NOTE, bench_one, failed_checks, format_table, write_json, write_markdown
    from .runtime.rpc import DeviceSpec

    port = free_port()
    print(f"[device] starting the emulated aarch64 device (qemu user mode) on 127.0.0.1:{port}; "
          "the first run sets it up (about a minute, cached)")
    start_device(port)
    try:
        remote = {variant: bench_one(DeviceSpec("127.0.0.1", port), library, [x], references[variant],
                                     BenchOptions(repeat=5, count=True, rtol=TOLERANCE))
                  for variant, library in arm.items()}
    finally:
        stop_device(port)
    for variant, result in remote.items():
        print(f"[device] {result.library} ran on the emulated aarch64 device over RPC: max |TVM - PyTorch| = "
              f"{result.max_abs_err:.2e}; {result.instructions:,} aarch64 instructions per call (exact)")
    results = [*host.values(), *remote.values()]
    print(format_table(results))
    print(f"note: {EMULATED_NOTE}")
    write_json(results, out / "device-report.json")
    png = write_markdown(results, out / "device-report.md", title="Host builds and arm builds on the emulated device")
    print(f"[device] wrote {out / 'device-report.md'}, {png.name} and device-report.json")
    bad = failed_checks(list(remote.values()))
    if bad:
        raise UserError("on the emulated device, " + ", ".join(
            f"{r.library} disagrees with PyTorch (max abs error {r.max_abs_err:.3g})" for r in bad))
    return remote


def _peers(imported: ImportedModel, x: np.ndarray, out: Path) -> dict[str, float]:
    """Host latency of the installed peer runtimes on the unified model (none installed: none)."""
    from .runtime.peers import peer_latencies

    return peer_latencies(imported.torch_module, x, out)


def _torch_ms(imported: ImportedModel, x: np.ndarray, repeat: int = 20) -> float:
    """Median PyTorch eager latency (ms) of the same TorchScript model on the same input."""
    inp = torch.from_numpy(x)
    times = []
    with torch.no_grad():
        imported.torch_module(inp)
        for _ in range(repeat):
            start = time.perf_counter()
            imported.torch_module(inp)
            times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3
