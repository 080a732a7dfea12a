"""Device presets: ``targets/NAME.json`` holds a TVM target dict plus what the tool needs around it.

A preset is looked up by name among the bundled presets (the repository's ``targets/`` folder, shipped in
the package as ``tvm_unify/presets`` and found through ``importlib.resources``, so an installed wheel has
them too), or given as a path to a JSON file of the same shape, so users can describe their own board
without touching the package.
"""

from __future__ import annotations

import json
from importlib import resources
from importlib.resources.abc import Traversable
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import tvm

from .errors import UserError, last_line



def _bundled() -> Traversable:
    """The bundled presets' folder, wherever the package is installed."""
    return resources.files("tvm_unify") / "presets"


@dataclass(frozen=True)
class TargetPreset:
    """A TVM target plus its architecture, cross compiler and default RPC key."""

    name: str
    description: str
    target: dict[str, Any]
    arch: str
    cross_compiler: str | None
    rpc_key: str
    # Whether the OpenCL device has cl_khr_fp16 (compile --gpu-precision fp16*); None: unknown, which a
    # host preset (this machine's device) answers by asking the device at compile time.
    fp16: bool | None = None

    def tvm_target(self) -> tvm.target.Target:
        return tvm.target.Target(self.target)

    @property
    def device(self) -> str:
        """Where the kernels run: ``cpu`` (llvm targets) or ``opencl`` (a GPU; the host code runs on the
        CPU of ``arch``)."""
        return "opencl" if self.target["kind"] == "opencl" else "cpu"

    @property
    def is_host(self) -> bool:
        """Whether the library runs on this machine (its host code is built for this CPU)."""
        return self.cross_compiler is None

    @property
    def cores(self) -> int:
        """CPU cores the compiled code runs on: the target's ``num-cores``, else this machine's for a host
        preset, else 4 (the usual phone or ARM board)."""
        if "num-cores" not in self.target:
            return (os.cpu_count() or 1) if self.is_host else 4
        cores = self.target["num-cores"]
        if not isinstance(cores, int) or isinstance(cores, bool) or cores < 1:
            raise UserError(f"target {self.name}: num-cores must be a positive integer (got {cores!r})")
        return cores


def _from_json(name: str, path: Path | Traversable) -> TargetPreset:
    try:
        data = json.loads(path.read_text())
        preset = TargetPreset(
            name=name,
            description=data.get("description", ""),
            target=data["target"],
            arch=data["arch"],
            cross_compiler=data.get("cross_compiler"),
            rpc_key=data.get("rpc_key", name),
            fp16=data.get("fp16"),
        )
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise UserError(f"bad target file {path}: {err!r} (needs 'target' and 'arch')") from None
    try:
        preset.tvm_target()
    except Exception as err:  # TVM raises its own error types for invalid target dicts
        raise UserError(f"bad TVM target in {path}: {last_line(err)}") from None
    return preset


def available_targets() -> list[str]:
    """Names of the bundled presets."""
    return sorted(p.name.removesuffix(".json") for p in _bundled().iterdir() if p.name.endswith(".json"))


def load_target(name_or_path: str | os.PathLike) -> TargetPreset:
    """Resolve a preset name (``arm``) or a JSON file path into a TargetPreset."""
    text = str(name_or_path)
    if text.endswith(".json") or os.sep in text:
        path = Path(text)
        if not path.is_file():
            raise UserError(f"target file not found: {path}")
        return _from_json(path.stem, path)
    path = _bundled() / f"{text}.json"
    if not path.is_file():
        raise UserError(f"unknown target {text!r} (choose from {', '.join(available_targets())}, "
                        "or give a path to a .json preset)")
    return _from_json(text, path)


def android_preset(preset: TargetPreset, ndk_dir: str | os.PathLike) -> TargetPreset:
    """The aarch64 ``preset`` retargeted to Android, linked with the NDK's newest aarch64 clang."""
    if preset.arch != "aarch64":
        raise UserError(f"--android-ndk needs an aarch64 target, {preset.name} is {preset.arch}")
    ndk = Path(ndk_dir)
    if not ndk.is_dir():
        raise UserError(f"Android NDK directory not found: {ndk}")
    clangs = {}
    for path in ndk.glob("toolchains/llvm/prebuilt/*/bin/aarch64-linux-android*-clang"):
        api = re.search(r"android(\d+)-clang$", path.name)
        if api:
            clangs[int(api.group(1))] = path
    if not clangs:
        raise UserError(f"no aarch64-linux-android<API>-clang under {ndk}/toolchains/llvm/prebuilt: "
                        "is this an Android NDK (r19 or newer)?")
    clang = clangs[max(clangs)]
    return replace(preset, name=f"{preset.name}-android", target=_with_mtriple(preset.target, "aarch64-linux-android"),
                   cross_compiler=str(clang))


def _with_mtriple(target: dict[str, Any], mtriple: str) -> dict[str, Any]:
    """``target`` with its CPU code built for ``mtriple``: the target's own for llvm, its host's for a GPU."""
    if "host" in target:
        return {**target, "host": {**target["host"], "mtriple": mtriple}}
    return {**target, "mtriple": mtriple}
