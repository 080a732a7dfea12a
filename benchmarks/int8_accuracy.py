"""Accuracy of the int8 kernels on *trained* unified models, on the host; writes int8_accuracy.md.

For digits-cnn (scikit-learn digits, 8x8), ResNet-18 and MobileNetV2 (``digits-rgb``, 32x32), 4x4
blocks / 75% pruned, every held-out test image is classified at batch 1 by PyTorch (fp32, the unified
weights) and by these builds:

- ``fp32``: the fp32 kernels;
- ``int8 host, per-call scales``: x86 ``direct`` kernels, weights exactly +-1, activation scale
  ``max|x| / 127`` computed per call;
- ``int8 host, calibrated, all int8``: the same with static per-layer scales from 64 training images;
- ``int8 host, calibrated, N layers fp32``: the default int8 build: the unified layers whose int8 inputs
  would move the output most stay fp32 until the rest meet ``--int8-max-error`` on the samples
  (``frontend/int8_sensitivity.py``);
- ``int8 ARM form, calibrated``, both ways: the kernels an aarch64 target gets (``dot4``: a block row's scales on
  one int8 grid, ``sdot.DotWeight``), built for the host: ``sdot`` and ``smmla`` compute the same int32
  sums (``tests/test_arm.py`` checks that on the emulated device), so this is their accuracy.

Untrained nets say little here (``unified_kernels.md``): only a trained one has accuracy to lose. Give
trained files with ``--model NAME=PATH`` (``tvm-unify unify NAME --block 4x4 --sparsity 0.75 -o PATH``);
digits-cnn is trained here when not given (12 epochs, ~1 min).

    python benchmarks/int8_accuracy.py [--model resnet18=r.pt --model mobilenetv2=m.pt] [--only NAME]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import tvm
from tvm import relax

from tvm_unify.compiler import compile_model, compile_module, lower_unified
from tvm_unify.data import default_dataset, load_task
from tvm_unify.frontend import DEFAULT_MAX_ERROR, calibrate_act_scales, import_torchscript, int8_fp32_fallback, unified_layers
from tvm_unify.pipeline import codegen_target
from tvm_unify.targets import load_target
from tvm_unify.unify import UnifyConfig, unify_builtin

MODELS = ("digits-cnn", "resnet18", "mobilenetv2")
CALIBRATION_SAMPLES = 64


def stacked(dataset, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (N x 1 x C x H x W, batch-1 each) and labels of the first ``count`` samples."""
    pairs = [dataset[i] for i in range(len(dataset) if count is None else count)]
    return (np.stack([x.numpy()[None] for x, _ in pairs]).astype("float32"), np.array([int(y) for _, y in pairs]))


def predictions(so: Path, inputs: np.ndarray) -> np.ndarray:
    """Logits of a host build on every input."""
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(so)), tvm.cpu())
    return np.concatenate([vm["main"](tvm.runtime.tensor(x)).numpy() for x in inputs])


def build_all(pt: Path, calibration: np.ndarray, tmp: Path, max_error: float) -> dict[str, Path]:
    """The host builds of the table, by label: calibrated int8 all-int8 and with the default fp32 fallback
    (``int8_fp32_fallback``), each in the x86 form and in the aarch64 form."""
    imported = import_torchscript(pt)
    scales = calibrate_act_scales(imported, calibration)
    fallback = int8_fp32_fallback(imported, calibration, scales, unified_layers(imported), max_error)
    print(f"[int8] {pt.stem}: fp32 fallback for {len(fallback)} layers: {', '.join(fallback) or '-'}", flush=True)
    builds = {}
    for label, options in {"fp32": {}, "int8 host, per-call scales": {"mode": "int8"},
                           "int8 host, calibrated, all int8": {"mode": "int8", "calibration": calibration,
                                                               "int8_max_error": math.inf},
                           f"int8 host, calibrated, {len(fallback)} layers fp32": {
                               "mode": "int8", "calibration": calibration, "int8_max_error": max_error}}.items():
        builds[label] = tmp / f"{pt.stem}-{len(builds)}.so"
        compile_model(imported, "host", builds[label], **options)
    for label, fp32_layers in {"all int8": (), f"{len(fallback)} layers fp32": fallback}.items():
        arm_form, _ = lower_unified(imported, "int8", scales, tasks=2, target=codegen_target(load_target("arm")),
                                    fp32_layers=fp32_layers)
        name = f"int8 ARM form (dot4 = sdot = smmla), calibrated, {label}"
        builds[name] = tmp / f"{pt.stem}-arm-{len(builds)}.so"
        compile_module(arm_form, "host", builds[name], imported.input_shape)
    return builds


def measure(name: str, pt: Path, tmp: Path, max_error: float) -> list[str]:
    imported = import_torchscript(pt)
    task = load_task(default_dataset(imported.input_shape), imported.input_shape)
    test_x, test_y = stacked(task.test)
    calibration, _ = stacked(task.train, CALIBRATION_SAMPLES)
    with torch.no_grad():
        ref = np.concatenate([imported.torch_module(torch.from_numpy(x)).numpy() for x in test_x])
    scale = np.abs(ref).max()
    rows = [f"| {name} | PyTorch fp32 (unified weights) | {(ref.argmax(1) == test_y).mean():.2%} | - | - | - |"]
    for label, so in build_all(pt, calibration, tmp, max_error).items():
        out = predictions(so, test_x)
        loss = 100 * ((ref.argmax(1) == test_y).mean() - (out.argmax(1) == test_y).mean())
        rows.append(f"| {name} | tvm-unify {label} | {(out.argmax(1) == test_y).mean():.2%} | {loss:+.2f} | "
                    f"{(out.argmax(1) == ref.argmax(1)).mean():.2%} | {np.abs(out - ref).max() / scale:.4f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], help="NAME=PATH.pt of a trained unified model")
    parser.add_argument("--only", action="append", choices=MODELS)
    parser.add_argument("--epochs", type=int, default=12, help="digits-cnn training epochs when not given")
    parser.add_argument("--int8-max-error", type=float, default=DEFAULT_MAX_ERROR,
                        help="the fp32 fallback's bound (compile --int8-max-error)")
    parser.add_argument("--notes", default="", help="how the given models were trained (goes into the report)")
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".md")))
    args = parser.parse_args()
    given = dict(item.split("=", 1) for item in args.model)
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or MODELS:
            if name not in given and name != "digits-cnn":
                print(f"[int8] {name}: no trained file given (--model {name}=PATH), skipped")
                continue
            pt = Path(given.get(name) or Path(tmp) / f"{name}.pt")
            if name not in given:
                unify_builtin(name, pt, UnifyConfig(block=(4, 4), sparsity=0.75), epochs=args.epochs,
                              log=lambda *_: None)
            rows.extend(measure(name, pt, Path(tmp), args.int8_max_error))
            print("\n".join(rows[-5:]), flush=True)
    lines = [
        "# int8 accuracy on trained unified models (host)",
        "",
        f"4x4 blocks, 75% pruned, the rest unified; all held-out test images of the built-in data, batch 1; int8 "
        f"scales calibrated on {CALIBRATION_SAMPLES} training images; fp32 fallback bound {args.int8_max_error}. {args.notes} torch {torch.__version__}, TVM "
        f"{tvm.__version__}. Run time {time.perf_counter() - start:.0f} s.",
        "",
        "Produced by `python benchmarks/int8_accuracy.py " + " ".join(sys.argv[1:]) + "`.",
        "",
        "| model | build | test accuracy | loss vs PyTorch (points) | top-1 agreement with PyTorch | "
        "max abs logit error / max abs logit |",
        "|---|---|---:|---:|---:|---:|",
        *rows,
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
