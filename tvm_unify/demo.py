"""``tvm-unify demo``: the main job end to end on a built-in model, with a short report.

Today: export a BatchNorm-calibrated built-in model as TorchScript, compile it for the host and for
``arm`` (cross-compiled aarch64), run the host build and check it against PyTorch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .compiler import compile_model
from .errors import UserError
from .frontend import import_torchscript
from .models import get_builtin
from .calibrate import calibrate_batchnorm
from .runner import library_arch, run_local, time_local
from .torchscript import save_torchscript

TOLERANCE = 1e-4


def run_demo(model: str = "digits-cnn", workdir: str | Path = "demo-out") -> dict[str, object]:
    """Run the demo and print its report; raises UserError if the host build disagrees with PyTorch."""
    builtin = get_builtin(model)
    out = Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    pt_path = out / f"{model}.pt"
    print(f"[1/4] exporting built-in {model} (BatchNorm-calibrated) -> {pt_path}")
    save_torchscript(calibrate_batchnorm(builtin.factory(), builtin.input_shape), pt_path,
                     builtin.input_shape, {"model": model})

    imported = import_torchscript(pt_path)
    report: dict[str, object] = {"model": model, "input_shape": builtin.input_shape}
    for step, target in [(2, "host"), (3, "arm")]:
        so_path = out / f"{model}-{target}.so"
        result = compile_model(imported, target, so_path)
        report[f"{target}_compile_s"] = sum(result.timings.values())
        report[f"{target}_arch"] = library_arch(so_path)
        print(f"[{step}/4] compiled for {target} -> {so_path} ({report[f'{target}_arch']}, "
              f"{so_path.stat().st_size / 1024:.0f} KiB, {report[f'{target}_compile_s']:.1f} s)")

    x = np.random.default_rng(0).standard_normal(builtin.input_shape).astype("float32")
    host_so = out / f"{model}-host.so"
    ours = run_local(host_so, x)
    with torch.no_grad():
        ref = imported.torch_module(torch.from_numpy(x)).numpy()
    err = float(np.abs(ours - ref).max())
    report.update(max_abs_err=err, tvm_ms=time_local(host_so, x) * 1e3, torch_ms=_torch_ms(imported, x))
    print(f"[4/4] host run: max |TVM - PyTorch| = {err:.2e} (tolerance {TOLERANCE:g}); "
          f"latency TVM {report['tvm_ms']:.2f} ms vs PyTorch {report['torch_ms']:.2f} ms")
    if not err <= TOLERANCE:
        raise UserError(f"host build disagrees with PyTorch: max abs error {err:.3g} > {TOLERANCE:g}")
    print("demo OK")
    return report


def _torch_ms(imported, x: np.ndarray, repeat: int = 10) -> float:
    import time

    inp = torch.from_numpy(x)
    times = []
    with torch.no_grad():
        imported.torch_module(inp)
        for _ in range(repeat):
            start = time.perf_counter()
            imported.torch_module(inp)
            times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3
