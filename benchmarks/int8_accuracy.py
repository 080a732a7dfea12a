"""Accuracy impact of the int8 kernels on a *trained* unified model, on the host; writes .md.

ADMM-unifies the built-in digits-cnn on scikit-learn's digits (4x4 blocks, 75% pruned, the rest
unified: what ``tvm-unify demo`` trains), compiles it with ``--mode fp32``, ``--mode int8`` (activation
scales computed per call) and ``--mode int8 --calibrate`` (static scales from 128 training digits),
and classifies every held-out test digit with each build and with PyTorch. Untrained nets say little
here (see ``unified_kernels.md``): only a trained one has an accuracy to lose.

    python benchmarks/int8_accuracy.py [--epochs 12]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import tvm
from tvm import relax

from tvm_unify.compiler import compile_model
from tvm_unify.data import load_task
from tvm_unify.frontend import import_torchscript
from tvm_unify.models import get_builtin
from tvm_unify.unify import UnifyConfig, unify_builtin

MODEL = "digits-cnn"
CALIBRATION_SAMPLES = 128


def stacked(dataset, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (N x 1 x C x H x W, batch-1 each) and labels of the first ``count`` samples."""
    pairs = [dataset[i] for i in range(len(dataset) if count is None else count)]
    return (np.stack([x.numpy()[None] for x, _ in pairs]).astype("float32"), np.array([int(y) for _, y in pairs]))


def predictions(so: Path, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a host build on every input."""
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(so)), tvm.cpu())
    return np.concatenate([vm["main"](tvm.runtime.tensor(x)).numpy() for x in inputs])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".md")))
    args = parser.parse_args()
    start = time.perf_counter()
    shape = get_builtin(MODEL).input_shape
    task = load_task("digits", shape)
    test_x, test_y = stacked(task.test)
    calib_x, _ = stacked(task.train, CALIBRATION_SAMPLES)
    with tempfile.TemporaryDirectory() as tmp:
        pt = Path(tmp) / f"{MODEL}.pt"
        unify_builtin(MODEL, pt, UnifyConfig(block=(4, 4), sparsity=0.75), epochs=args.epochs, log=lambda *_: None)
        imported = import_torchscript(pt)
        with torch.no_grad():
            ref = np.concatenate([imported.torch_module(torch.from_numpy(x)).numpy() for x in test_x])
        builds = {"fp32": {}, "int8 (per-call scales)": {"mode": "int8"},
                  f"int8 (calibrated on {CALIBRATION_SAMPLES} train digits)": {"mode": "int8", "calibration": calib_x}}
        logits = {}
        for label, options in builds.items():
            so = Path(tmp) / f"{len(logits)}.so"
            compile_model(imported, "host", so, **options)
            logits[label] = predictions(so, test_x)
    scale = np.abs(ref).max()
    rows = [f"| PyTorch fp32 (unified weights) | {(ref.argmax(1) == test_y).mean():.2%} | - | - |"]
    for label, out in logits.items():
        rows.append(f"| tvm-unify {label} | {(out.argmax(1) == test_y).mean():.2%} | "
                    f"{(out.argmax(1) == ref.argmax(1)).mean():.2%} | {np.abs(out - ref).max() / scale:.3f} |")
    lines = [
        "# int8 accuracy on a trained unified model (host)",
        "",
        f"{MODEL}, ADMM-unified on scikit-learn's digits ({args.epochs} epochs: 4x4 blocks, 75% pruned, the rest "
        f"unified), {len(test_y)} held-out test digits, batch 1. torch {torch.__version__}, TVM {tvm.__version__}. "
        f"Run time {time.perf_counter() - start:.0f} s.",
        "",
        "Produced by `python benchmarks/int8_accuracy.py " + " ".join(sys.argv[1:]) + "`.",
        "",
        "| build | test accuracy | top-1 agreement with PyTorch | max abs logit error / max abs logit |",
        "|---|---|---|---|",
        *rows,
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
