"""Unified OpenCL kernels (``kernels/gpu.py``) vs dense: per-layer global-memory traffic and arithmetic,
and whole models on PoCL as a correctness run; writes ``benchmarks/gpu.md``.

There is no mobile GPU here, so the per-layer figures are counted, not timed: from each unified layer's
blocked-ELL weight (the arrays its kernel reads), its GEMM shape and the work-group tiling
``gpu.plan_launch`` picks for the ``mali`` preset, the bytes the kernel's loads and stores move through
global memory and the operations its loop body executes (per block: ``rows*cols`` sign-flipped adds and
``rows`` multiply-adds; pad slots included). The dense reference is the same GEMM computed densely on
the same work-group tiling (every pixel tile reads the whole dense weight), plus the compulsory traffic
of both (each tensor once). PoCL times are CPU OpenCL timings: they show the builds run and agree with
PyTorch, not how a mobile GPU performs.

The fp16 table counts the same kernels with ``--gpu-precision fp16`` (half activations and scales: the
tile, pixel tile and row count ``plan_launch`` picks for 2-byte inputs), against fp32. The fp16 runs are
on this machine's OpenCL device with cl_khr_fp16 (Intel's CPU OpenCL runtime, the ``opencl-fp16``
extra): again correctness, not speed.

    python benchmarks/gpu.py [--models resnet18 mobilenetv2] [--pocl digits-cnn resnet18] [--fp16 digits-cnn]
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tvm
from torch import nn

from tvm_unify.compiler import compile_model
from tvm_unify.format import BlockSpec, verify
from tvm_unify.frontend import import_torchscript
from tvm_unify.kernels import Conv2dGeometry, to_ell
from tvm_unify.kernels.common import conv2d_problem, dense_problem
from tvm_unify.kernels.gpu import PIXEL_TILE, GpuLimits, plan_launch
from tvm_unify.models import get_builtin
from tvm_unify.runtime.local import load_local, local_device, run_local
from tvm_unify.targets import load_target
from tvm_unify.testing import torch_reference, unified_model
from tvm_unify.torchscript import save_torchscript

ROOT = Path(__file__).resolve().parent.parent
MB = 1e6


@dataclass
class Layer:
    """One unified layer's counted traffic (bytes) and operations, unified vs dense."""

    name: str
    gemm: tuple[int, int, int]  # O, K, P
    tile: tuple[int, int]  # pixels x block rows per work-group
    unified_bytes: float
    dense_bytes: float
    unified_min: float  # compulsory: input, weight arrays, output once each
    dense_min: float
    unified_ops: float
    dense_ops: float


def layer_inputs(model: nn.Module, names: list[str], shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """The input shape of each named layer, from one forward pass."""
    seen: dict[str, tuple[int, ...]] = {}
    modules = dict(model.named_modules())
    def record(name: str):
        def hook(_module, inputs) -> None:
            seen.setdefault(name, tuple(inputs[0].shape))
        return hook

    hooks = [modules[n].register_forward_pre_hook(record(n)) for n in names]
    with torch.no_grad():
        model(torch.zeros(shape))
    for hook in hooks:
        hook.remove()
    return seen


def count_layer(name: str, module: nn.Module, x_shape: tuple[int, ...], limits: GpuLimits,
                itemsize: int = 4) -> Layer:
    """The traffic and operations of ``module``'s unified kernel and of a dense kernel, same tiling, with
    activations, scales and dense weights of ``itemsize`` bytes (4: fp32, 2: fp16)."""
    w = module.weight.detach().numpy()
    ell = to_ell(verify(w, BlockSpec(4, 4, "tap")).encoded)
    if isinstance(module, nn.Conv2d):
        g = Conv2dGeometry(*x_shape, module.out_channels, module.kernel_size, module.stride,
                           (module.padding[0], module.padding[1]) * 2, module.dilation)
        problem = conv2d_problem(g, "tap", PIXEL_TILE, in_place=False)
    else:
        problem = dense_problem(x_shape[0], module.in_features, module.out_features, in_place=False)
    o, k, p = w.shape[0], problem.k_extent, problem.p_extent
    launch = plan_launch(problem, ell.columns.shape[0], limits, itemsize)
    tiles, row_blocks = p // launch.pixels, -(-ell.columns.shape[0] // launch.rows)
    slots = sum(g.size * g.width for g in ell.groups)  # computed slots, padding included
    entry = 4 + itemsize + ell.signs.shape[2] * ell.signs.itemsize  # column, scale, sign words
    x_bytes = row_blocks * k * p * itemsize if launch.staged else slots * ell.cols * p * itemsize
    y_bytes = o * p * itemsize
    unified = x_bytes + tiles * (slots * entry + ell.order.nbytes) + y_bytes
    dense = row_blocks * k * p * itemsize + tiles * o * k * itemsize + y_bytes
    weight_bytes = ell.nbytes - ell.scales.nbytes + ell.scales.size * itemsize
    return Layer(name, (o, k, p), (launch.pixels, launch.rows), unified, dense,
                 k * p * itemsize + weight_bytes + y_bytes, k * p * itemsize + o * k * itemsize + y_bytes,
                 slots * p * (ell.rows * ell.cols + 2 * ell.rows), 2.0 * o * k * p)


def count_model(name: str, limits: GpuLimits, itemsize: int = 4) -> list[Layer]:
    model, names = unified_model(name)
    shapes = layer_inputs(model, names, get_builtin(name).input_shape)
    modules = dict(model.named_modules())
    return [count_layer(n, modules[n], shapes[n], limits, itemsize) for n in names]


def fp16_table(name: str, fp32: list[Layer], fp16: list[Layer]) -> list[str]:
    """Per layer, the unified kernel's counted bytes in fp32 and fp16, and the dense fp16 kernel's."""
    lines = [f"### {name}: fp16 vs fp32 (`--gpu-precision fp16`)", "",
             "| layer | tile fp32 / fp16 | unified fp32 MB | unified fp16 MB | fp32 / fp16 | dense fp16 MB | "
             "dense fp16 / unified fp16 |", "|---|---|---:|---:|---:|---:|---:|"]
    rows = [(a.name, f"{a.tile[0]}x{a.tile[1]} / {b.tile[0]}x{b.tile[1]}", a.unified_bytes, b.unified_bytes,
             b.dense_bytes) for a, b in zip(fp32, fp16)]
    rows.append(("**all unified layers**", "", *(sum(r[i] for r in rows) for i in (2, 3, 4))))
    for layer, tile, u32, u16, d16 in rows:
        lines.append(f"| {layer} | {tile} | {u32 / MB:.2f} | {u16 / MB:.2f} | {u32 / u16:.2f}x | {d16 / MB:.2f} | "
                     f"{d16 / u16:.1f}x |")
    return lines + [""]


def fp16_run(name: str, work: Path) -> dict[str, float]:
    """Max error (relative to PyTorch's output scale) of ``name``'s unified ``opencl`` builds in each
    precision, run on the first local OpenCL device with cl_khr_fp16; and that device's name."""
    model, _ = unified_model(name)
    path = work / f"{name}-fp16.pt"
    save_torchscript(model, path, get_builtin(name).input_shape)
    imported = import_torchscript(path)
    x = np.random.default_rng(1).standard_normal(imported.input_shape).astype("float32")
    ref, result = torch_reference(imported, x), {}
    for precision in ("fp32", "fp16", "fp16-acc"):
        so = work / f"{name}-{precision}.so"
        compile_model(imported, "opencl", so, precision=precision)
        result[precision] = float(np.abs(run_local(so, x, "opencl") - ref).max() / np.abs(ref).max())
    result["device"] = local_device("opencl", ("cl_khr_fp16",)).device_name
    return result


def pocl_run(name: str, work: Path) -> dict[str, float]:
    """Unified and dense ``opencl`` builds of ``name`` timed on PoCL (ms), with the unified build's max
    error relative to PyTorch's output scale."""
    model, _ = unified_model(name)
    path = work / f"{name}.pt"
    save_torchscript(model, path, get_builtin(name).input_shape)
    imported = import_torchscript(path)
    x = np.random.default_rng(1).standard_normal(imported.input_shape).astype("float32")
    dev, result = local_device("opencl"), {}
    for variant, dense in (("unified", False), ("dense", True)):
        so = work / f"{name}-{variant}.so"
        compile_model(imported, "opencl", so, dense=dense, emit_source=work / f"{name}-{variant}-src")
        vm = load_local(so, "opencl")
        arg = tvm.runtime.tensor(x, dev)
        out = vm["main"](arg).numpy()
        ref = torch_reference(imported, x)
        result[f"{variant}_err"] = float(np.abs(out - ref).max() / np.abs(ref).max())
        result[variant] = vm.time_evaluator("main", dev, number=3, repeat=3)(arg).min * 1e3
    return result


def slot_loop(work: Path, name: str) -> list[str]:
    """The block loop of the first unified kernel in the OpenCL C emitted for ``name``'s unified build."""
    source = "".join(p.read_text() for p in sorted((work / f"{name}-unified-src").glob("*.cl")))
    body = source[source.index("__kernel void unified_"):].split("{", 1)[1]
    lines = body.splitlines()
    start = next(i for i, line in enumerate(lines) if "for (int slot" in line)
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith(lines[start][:len(lines[start]) -
                                                                                          len(lines[start].lstrip())] + "}"))
    return ["```c", *lines[start:end + 1], "```"]


def layer_table(name: str, layers: list[Layer]) -> list[str]:
    lines = [f"### {name} (32x32, batch 1, 4x4 blocks, 75% pruned)", "",
             "| layer | O x K x P | tile (px x rows) | unified MB | dense MB | traffic ratio | compulsory MB "
             "unified / dense | unified Mop | dense Mflop | op ratio |",
             "|---|---|---|---:|---:|---:|---|---:|---:|---:|"]
    for layer in layers:
        o, k, p = layer.gemm
        lines.append(f"| {layer.name} | {o} x {k} x {p} | {layer.tile[0]} x {layer.tile[1]} | "
                     f"{layer.unified_bytes / MB:.2f} | {layer.dense_bytes / MB:.2f} | "
                     f"{layer.dense_bytes / layer.unified_bytes:.1f}x | {layer.unified_min / MB:.2f} / "
                     f"{layer.dense_min / MB:.2f} | {layer.unified_ops / MB:.1f} | {layer.dense_ops / MB:.1f} | "
                     f"{layer.dense_ops / layer.unified_ops:.1f}x |")
    total = [sum(getattr(x, f) for x in layers) for f in ("unified_bytes", "dense_bytes", "unified_min",
                                                          "dense_min", "unified_ops", "dense_ops")]
    lines.append(f"| **all unified layers** | | | {total[0] / MB:.2f} | {total[1] / MB:.2f} | "
                 f"{total[1] / total[0]:.1f}x | {total[2] / MB:.2f} / {total[3] / MB:.2f} | {total[4] / MB:.1f} | "
                 f"{total[5] / MB:.1f} | {total[5] / total[4]:.1f}x |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["resnet18", "mobilenetv2"])
    parser.add_argument("--pocl", nargs="*", default=["digits-cnn", "resnet18"])
    parser.add_argument("--fp16", nargs="*", default=["digits-cnn", "resnet18"],
                        help="models to build in fp32/fp16/fp16-acc and run on an OpenCL device with fp16")
    parser.add_argument("-o", "--output", default=str(ROOT / "benchmarks" / "gpu.md"))
    args = parser.parse_args()
    limits = GpuLimits.of(load_target("mali").tvm_target())
    lines = ["# Unified layers on mobile GPUs (OpenCL): counted traffic and arithmetic", "",
             "Written by `python benchmarks/gpu.py`. No mobile GPU was available: the tables count, per "
             "unified layer, the global-memory bytes the unified OpenCL kernel's loads and stores move and "
             "the operations it executes (sign-flipped adds + one multiply-add per block row of a block, "
             "pad slots included), against a dense GEMM on the same work-group tiling (each pixel tile "
             "reads the whole dense weight) and the compulsory traffic (each tensor once). Tiling: the "
             f"`mali` preset ({limits.threads} work-items, {limits.local_bytes // 1024} KiB local memory).",
             ""]
    for name in args.models:
        fp32 = count_model(name, limits)
        lines += layer_table(name, fp32) + fp16_table(name, fp32, count_model(name, limits, itemsize=2))
    if args.pocl:
        device = local_device("opencl").device_name  # PoCL's, or Intel's CPU device where the fp16 extra is in
        lines += [f"## OpenCL runs on {device} (correctness only: a CPU OpenCL device, not a GPU speed figure)", "",
                  "| model | unified ms | dense ms | unified max err / output scale | dense max err |",
                  "|---|---:|---:|---:|---:|"]
        with tempfile.TemporaryDirectory() as work:
            for name in args.pocl:
                r = pocl_run(name, Path(work))
                lines.append(f"| {name} | {r['unified']:.1f} | {r['dense']:.1f} | {r['unified_err']:.1e} | "
                             f"{r['dense_err']:.1e} |")
            lines += ["", f"## The block loop as generated ({args.pocl[0]}, first unified kernel, OpenCL C)", "",
                      "Per block: its sign word and its 4 inputs (from local memory) into registers, 16 sign "
                      "flips (XOR of the float's sign bit) and adds, then one multiply-add per block row "
                      "with the block's scale.", "", *slot_loop(Path(work), args.pocl[0])]
        lines.append("")
    if args.fp16:
        lines += ["## fp16 builds run (correctness only: a CPU OpenCL device with cl_khr_fp16)", "",
                  "Max error of the unified `opencl` build's output vs PyTorch fp32, relative to the output "
                  "scale, per `--gpu-precision`.", "", "| model | device | fp32 | fp16 | fp16-acc |",
                  "|---|---|---:|---:|---:|"]
        with tempfile.TemporaryDirectory() as work:
            for name in args.fp16:
                r = fp16_run(name, Path(work))
                lines.append(f"| {name} | {r['device']} | {r['fp32']:.1e} | {r['fp16']:.1e} | {r['fp16-acc']:.1e} |")
        lines.append("")
    Path(args.output).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
