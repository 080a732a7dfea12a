"""``tvm-unify demo``: the main job end to end on a built-in model, with a short report.

Train-unify a built-in model on its built-in data (ADMM, 4x4 blocks, 75% pruned, the rest unified),
compile it for the host and for ``arm`` (cross-compiled aarch64) with the unified-block lowering, run the
host build and check it against PyTorch, then run the arm build on the emulated aarch64 device over RPC,
check it too, and report both side by side.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .runtime.bench import BenchOptions, BenchResult, bench_local
from .compiler import compile_model
from .errors import UserError
from .frontend.importer import ImportedModel, import_torchscript
from .passes import report_table
from .runtime.local import library_arch

TOLERANCE = 1e-4
STEPS = 5


def run_demo(model: str = "digits-cnn", workdir: str | Path = "demo-out", epochs: int = 12,
             device: bool = True) -> dict[str, object]:
    """Run the demo and print its report; raises UserError if a build disagrees with PyTorch."""
    from .unify import UnifyConfig, unify_builtin
    from .unify.inspect import format_summary, summarize

    out = Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    pt_path = out / f"{model}.pt"
    print(f"[1/{STEPS}] train-unify built-in {model} on its built-in data (ADMM, 4x4 blocks, 75% pruned, "
          f"{epochs} epochs) -> {pt_path}")
    unify_report, _ = unify_builtin(model, pt_path, UnifyConfig(block=(4, 4), sparsity=0.75), epochs=epochs)
    print(f"accuracy on {unify_report.data}: dense {unify_report.dense_accuracy:.2%}, "
          f"unified {unify_report.final_accuracy:.2%} ({unify_report.seconds:.0f} s of training)")
    print(format_summary(summarize(pt_path)))

    imported = import_torchscript(pt_path)
    report: dict[str, object] = {"model": model, "input_shape": imported.input_shape,
                                 "dense_accuracy": unify_report.dense_accuracy,
                                 "unified_accuracy": unify_report.final_accuracy}
    for step, target in [(2, "host"), (3, "arm")]:
        so_path = out / f"{model}-{target}.so"
        result = compile_model(imported, target, so_path)  # lowered per target: kernels fit its core count
        report[f"{target}_compile_s"] = sum(result.timings.values())
        report[f"{target}_arch"] = library_arch(so_path)
        print(f"[{step}/{STEPS}] compiled for {target} -> {so_path} ({report[f'{target}_arch']}, "
              f"{so_path.stat().st_size / 1024:.0f} KiB, {report[f'{target}_compile_s']:.1f} s)")
        if target == "host":
            print(report_table(result.report))

    x = np.random.default_rng(0).standard_normal(imported.input_shape).astype("float32")
    with torch.no_grad():
        ref = imported.torch_module(torch.from_numpy(x)).numpy()
    host = bench_local(out / f"{model}-host.so", [x], ref, BenchOptions(repeat=20, rtol=TOLERANCE))
    err = float(host.max_abs_err)
    report.update(max_abs_err=err, tvm_ms=host.timing.median_ms, torch_ms=_torch_ms(imported, x))
    print(f"[4/{STEPS}] host run: max |TVM - PyTorch| = {err:.2e} (tolerance {TOLERANCE:g}); "
          f"latency TVM {report['tvm_ms']:.3f} ms vs PyTorch eager {report['torch_ms']:.3f} ms")
    if not err <= TOLERANCE:
        raise UserError(f"host build disagrees with PyTorch: max abs error {err:.3g} > {TOLERANCE:g}")
    if device:
        print(f"[5/{STEPS}] arm build on the emulated aarch64 device")
        report["device"] = run_on_emulated_device(out, host, out / f"{model}-arm.so", x, ref)
    else:
        print(f"[5/{STEPS}] skipped the emulated device (--no-device)")
    print("demo OK")
    return report


def run_on_emulated_device(out: Path, host: BenchResult, arm_so: Path, x: np.ndarray, ref: np.ndarray) -> dict:
    """Run the arm build on the emulated aarch64 device over RPC, check it against PyTorch, and report
    its latency and exact instruction count next to the host build's measurement ``host`` (markdown +
    PNG + JSON in ``out``).

    The device is started on a free loopback port and stopped again, whatever happens.
    """
    from .runtime.bench import EMULATED_NOTE, bench_one, failed_checks, format_table
    from .runtime.bench import write_json, write_markdown
    from .device.emulator import start_device, stop_device
    from .device.procs import free_port
    from .runtime.rpc import DeviceSpec

    port = free_port()
    print(f"[device] starting the emulated aarch64 device (qemu user mode) on 127.0.0.1:{port}; "
          "the first run sets it up (about a minute, cached)")
    start_device(port)
    try:
        remote = bench_one(DeviceSpec("127.0.0.1", port), arm_so, [x], ref,
                           BenchOptions(repeat=5, count=True, rtol=TOLERANCE))
    finally:
        stop_device(port)
    results = [host, remote]
    print(f"[device] {arm_so.name} ran on the emulated aarch64 device over RPC: max |TVM - PyTorch| = "
          f"{remote.max_abs_err:.2e}; {remote.instructions:,} aarch64 instructions per call (exact)")
    print(format_table(results))
    print(f"note: {EMULATED_NOTE}")
    write_json(results, out / "device-report.json")
    png = write_markdown(results, out / "device-report.md", title="Host build vs arm build on the emulated device")
    print(f"[device] wrote {out / 'device-report.md'}, {png.name} and device-report.json")
    if failed_checks(results):
        raise UserError(f"{arm_so.name} on the emulated device disagrees with PyTorch: max abs error "
                        f"{remote.max_abs_err:.3g}")
    return {"max_abs_err": remote.max_abs_err, "instructions": remote.instructions,
            "emulated_median_ms": remote.timing.median_ms, "host_median_ms": results[0].timing.median_ms}


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
