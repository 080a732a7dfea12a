"""Build an imported Relax module for a target preset and export it as a shared library.

Cross targets link with the preset's cross compiler (Debian's ``aarch64-linux-gnu-gcc`` for ARM), so
``file model.so`` reports the device architecture. Libraries are written atomically.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field

import tvm
from tvm.support import cc

from .errors import UserError
from .fileio import atomic_output
from .frontend import ImportedModel, import_torchscript
from .targets import TargetPreset, load_target


@dataclass
class CompileResult:
    """What a compile produced and how long each stage took (seconds)."""

    output: str
    target: str
    input_shape: tuple[int, ...]
    timings: dict[str, float] = field(default_factory=dict)


def build(mod: tvm.IRModule, preset: TargetPreset) -> tvm.runtime.Executable:
    """Lower and generate code for ``preset`` with TVM's default Relax pipeline."""
    target = preset.tvm_target()
    with target:
        return tvm.compile(mod, target=target)


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
) -> CompileResult:
    """TorchScript file (or an already imported model) -> shared library for ``target``."""
    preset = target if isinstance(target, TargetPreset) else load_target(target)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    imported = model if isinstance(model, ImportedModel) else import_torchscript(model, input_shape)
    timings["import"] = time.perf_counter() - start
    start = time.perf_counter()
    executable = build(imported.mod, preset)
    timings["build"] = time.perf_counter() - start
    start = time.perf_counter()
    export_library(executable, preset, output)
    timings["export"] = time.perf_counter() - start
    return CompileResult(str(output), preset.name, imported.input_shape, timings)
