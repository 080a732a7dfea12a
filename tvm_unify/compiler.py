"""Build an imported Relax module for a target preset and export it as a shared library.

Cross targets link with the preset's cross compiler (Debian's ``aarch64-linux-gnu-gcc`` for ARM), so
``file model.so`` reports the device architecture. Libraries are written atomically.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable, Collection, Mapping

import numpy as np
import tvm
from tvm.support import cc

from .errors import UserError
from .fileio import atomic_output
from .format import specs_from_metadata
from .frontend import (DEFAULT_MAX_ERROR, ImportedModel, calibrate_act_scales, import_torchscript, int8_fp32_fallback,
                       layer_names, unified_layers)
from .kernels import DEFAULT_TASKS, KernelOptions
from .kernels.gpu import FP32, PRECISIONS, GpuPrecision
from .kernels.unified import UnifiedLayer
from .passes import LayerReport, LowerUnifiedBlocks
from .pipeline import build, codegen_target
from .runtime.opencl_setup import FP16_HINT, device_extensions, ensure_opencl_runtime
from .targets import TargetPreset, load_target
from .tuning.apply import RecordChooser, install_dense
from .tuning.records import SHIPPED, Records, records_for


@dataclass
class CompileResult:
    """What a compile produced and how long each stage took (seconds)."""

    output: str
    target: str
    input_shape: tuple[int, ...]
    timings: dict[str, float] = field(default_factory=dict)
    report: list[LayerReport] = field(default_factory=list)
    schedules: dict[str, str] = field(default_factory=dict)  # kernel or layer -> "tuned" / "default"
    records: str | None = None  # the tuning records folder used


def lower_unified(imported: ImportedModel, mode: str = "fp32", act_scales: Mapping[str, float] | None = None,
                  tasks: int = DEFAULT_TASKS, target: tvm.target.Target | None = None,
                  choose: Callable[[UnifiedLayer], KernelOptions] | None = None,
                  timings: dict[str, float] | None = None,
                  precision: GpuPrecision = FP32,
                  fp32_layers: Collection[str] = ()) -> tuple[tvm.IRModule, list[LayerReport]]:
    """Run ``LowerUnifiedBlocks`` with the file's block specs (and int8 ``act_scales`` by module path, if
    given) for a device of ``tasks`` cores and the codegen ``target`` (None: generic CPU kernels), with
    ``choose`` picking each unified kernel's options (tuning records), on the graph in the GPU
    ``precision`` (``to_gpu_precision``), the unified layers ``fp32_layers`` kept in fp32 by an int8 build;
    return the module and the per-layer report (and in
    ``timings["generate"]`` the seconds spent generating unified kernels)."""
    lowering = LowerUnifiedBlocks(mode, specs_from_metadata(imported.metadata), layer_names(imported.torch_module),
                                  act_scales, tasks=tasks, target=target, choose=choose, precision=precision,
                                  fp32_layers=fp32_layers)
    mod = lowering(to_gpu_precision(imported.mod, precision))
    if timings is not None:
        timings["generate"] = lowering.generation_seconds
    return mod, lowering.report


def to_gpu_precision(mod: tvm.IRModule, precision: GpuPrecision) -> tvm.IRModule:
    """The graph in ``precision``: unchanged for fp32, else TVM's ``ToMixedPrecision`` (activations and
    weights in fp16, conv2d/matmul summing in the precision's accumulation dtype; ops it keeps in fp32,
    such as BatchNorm, cast around them; the model's inputs and outputs stay float32). The unified
    layers' kernels then take and give fp16 (``LowerUnifiedBlocks``)."""
    if precision is FP32:
        return mod
    return tvm.relax.transform.ToMixedPrecision(out_dtype=precision.accumulate)(mod)


def gpu_precision(preset: TargetPreset, name: str) -> GpuPrecision:
    """The ``--gpu-precision`` ``name`` for ``preset``, or a one-line UserError when it cannot have it: fp16
    needs an OpenCL target whose device has cl_khr_fp16 (the preset's ``fp16``, or for this machine's
    OpenCL device, the device itself)."""
    if name not in PRECISIONS:
        raise UserError(f"unknown GPU precision {name!r} (choose from {', '.join(PRECISIONS)})")
    precision = PRECISIONS[name]
    if precision is FP32:
        return precision
    if preset.device != "opencl":
        raise UserError(f"--gpu-precision {name} is for OpenCL targets (mali, adreno, opencl); "
                        f"{preset.name} is a CPU target")
    if preset.fp16 is None and preset.is_host:
        ensure_opencl_runtime()
        if not any("cl_khr_fp16" in extensions for extensions in device_extensions().values()):
            raise UserError(f"--gpu-precision {name} needs cl_khr_fp16, which no OpenCL device here has: {FP16_HINT}")
    elif not preset.fp16:
        raise UserError(f"--gpu-precision {name} needs cl_khr_fp16, which target {preset.name} does not declare "
                        '(set "fp16": true in its preset if its device has it)')
    return precision


def export_library(executable: tvm.runtime.Executable, preset: TargetPreset, output: str | os.PathLike) -> None:
    """Write ``executable`` as a shared library for the preset's architecture, atomically."""
    fcompile = None
    if preset.cross_compiler:
        if shutil.which(preset.cross_compiler) is None:
            raise UserError(f"cross compiler {preset.cross_compiler} not found for target {preset.name}: "
                            "install it (Debian: apt-get install gcc-aarch64-linux-gnu)")
        fcompile = cc.cross_compiler(preset.cross_compiler)
    with atomic_output(output, suffix=".so") as tmp:
        executable.export_library(str(tmp), fcompile=fcompile)


def compile_model(
    model: str | os.PathLike | ImportedModel,
    target: str | TargetPreset,
    output: str | os.PathLike,
    input_shape: tuple[int, ...] | None = None,
    mode: str = "fp32",
    dense: bool = False,
    calibration: np.ndarray | None = None,
    emit_source: str | os.PathLike | None = None,
    schedules: str | os.PathLike | None = SHIPPED,
    precision: str = "fp32",
    int8_max_error: float = DEFAULT_MAX_ERROR,
) -> CompileResult:
    """TorchScript file (or an already imported model) -> shared library for ``target``.

    Unified layers are lowered to block-sparse kernels in ``mode`` (fp32 or int8) unless ``dense``. For
    int8, ``calibration`` (sample inputs, see ``int8_calibration.sample_batches``) fixes each layer's activation
    scale to max|input|/127 over the samples; without it the kernels compute that scale on every call.
    With samples, unified layers whose int8 inputs would move the output by more than ``int8_max_error``
    of its scale stay fp32, the most sensitive first (``int8_fp32_fallback``; ``inf``: none do).
    ``emit_source`` names a folder for the generated code (``emit_sources``). ``schedules``: the tuning
    records to apply (``tuning.records_for``: the shipped ones by default, a folder of per-target
    folders, or None for none); the result says per kernel whether it is tuned. ``precision`` is the
    OpenCL kernels' (``gpu_precision``): fp32, fp16 (fp16 storage, fp32 sums) or fp16-acc (fp16 sums too)."""
    if calibration is not None and (mode != "int8" or dense):
        raise UserError("calibration samples set int8 activation scales: use them with --mode int8, without --dense")
    preset = target if isinstance(target, TargetPreset) else load_target(target)
    gpu = gpu_precision(preset, precision)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    imported = model if isinstance(model, ImportedModel) else import_torchscript(model, input_shape)
    timings["import"] = time.perf_counter() - start
    act_scales, fp32_layers = None, []
    if calibration is not None:
        start = time.perf_counter()
        act_scales = calibrate_act_scales(imported, calibration)
        if math.isfinite(int8_max_error):
            fp32_layers = int8_fp32_fallback(imported, calibration, act_scales, unified_layers(imported),
                                             int8_max_error)
        timings["calibrate"] = time.perf_counter() - start
    records = records_for(schedules, preset.name)
    chooser = RecordChooser(records) if records is not None else None
    mod, report = to_gpu_precision(imported.mod, gpu), []
    if not dense:
        start = time.perf_counter()
        mod, report = lower_unified(imported, mode, act_scales, tasks=preset.cores, target=codegen_target(preset),
                                    choose=chooser, timings=timings, precision=gpu, fp32_layers=fp32_layers)
        timings["lower"] = time.perf_counter() - start
        timings["of which kernel generation"] = timings.pop("generate")
    result = compile_module(mod, preset, output, imported.input_shape, emit_source, records)
    result.timings = {**timings, **result.timings}
    result.report = report
    result.schedules = {**(chooser.used if chooser else {}), **result.schedules}
    return result


def compile_module(mod: tvm.IRModule, target: str | TargetPreset, output: str | os.PathLike,
                   input_shape: tuple[int, ...], emit_source: str | os.PathLike | None = None,
                   records: Records | None = None) -> CompileResult:
    """Build an imported (and possibly already lowered, for this target's cores) module for ``target``
    with the dense kernels' tuning ``records``, and export it (and its generated code into
    ``emit_source``, if given)."""
    preset = target if isinstance(target, TargetPreset) else load_target(target)
    timings: dict[str, float] = {}
    used: dict[str, str] = {}
    tuned = None
    if records is not None:
        def tuned(prepared: tvm.IRModule) -> None:
            used.update(install_dense(prepared, records, codegen_target(preset)))
    executable = build(mod, preset, tuned, timings)
    if emit_source is not None:
        emit_sources(executable, emit_source)
    start = time.perf_counter()
    export_library(executable, preset, output)
    timings["export"] = time.perf_counter() - start
    return CompileResult(str(output), preset.name, tuple(input_shape), timings, schedules=used,
                         records=None if records is None else str(records.dir))


# Source formats worth reading per kind of generated module: assembly and LLVM IR for CPU code,
# OpenCL C for GPU kernels.
SOURCE_FORMATS = {"llvm": ("s", "ll"), "opencl": ("cl",)}


def emit_sources(executable: tvm.runtime.Executable, directory: str | os.PathLike) -> list[Path]:
    """Write the generated code of every module ``executable`` imports into ``directory`` (created if
    missing): ``<kind><n>.<format>``, e.g. ``llvm0.s`` for review or instruction checks. Returns the paths."""
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise UserError(f"--emit-source needs a directory, {out} is a file")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for index, module in enumerate(_generated_modules(executable.mod)):
        for fmt in SOURCE_FORMATS.get(module.kind, ("",)):
            path = out / f"{module.kind}{index}.{fmt or 'txt'}"
            with atomic_output(path) as tmp:
                tmp.write_text(module.inspect_source(fmt))
            written.append(path)
    return written


def _generated_modules(module: tvm.runtime.Module) -> list[tvm.runtime.Module]:
    """The code-generated modules under the VM executable, depth first."""
    found = []
    for child in module.imports:
        found.append(child)
        found.extend(_generated_modules(child))
    return found
