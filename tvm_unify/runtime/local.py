"""Run an exported library locally with the Relax VM.

Only libraries built for this machine's architecture can load here; for others we say so up front
instead of letting the dynamic loader fail with an obscure message. A library built for an OpenCL
target runs on this machine's OpenCL device (``device="opencl"``: PoCL's CPU device without a GPU), after
TVM's OpenCL runtime is loaded (``opencl_setup``), which the wheel lacks.
"""

from __future__ import annotations

import os
import platform
import re

import numpy as np
import tvm
from tvm import relax

from ..errors import UserError, first_line
from ..fileio import require_file
from .opencl_setup import opencl_device

# ELF e_machine values of the architectures we build for.
_ELF_MACHINES = {62: "x86_64", 183: "aarch64", 40: "arm"}
DEVICES = ("cpu", "opencl")


def library_arch(path: str | os.PathLike) -> str:
    """The architecture an ELF shared library was built for (``x86_64``, ``aarch64``...)."""
    header = require_file(path, "library").read_bytes()[:20]
    if len(header) < 20 or header[:4] != b"\x7fELF":
        raise UserError(f"not a shared library (no ELF header): {path}")
    machine = int.from_bytes(header[18:20], "little")
    return _ELF_MACHINES.get(machine, f"ELF machine {machine}")


def library_device(path: str | os.PathLike) -> str:
    """``opencl`` for a library whose kernels are OpenCL (a GPU build embeds their ``__kernel`` source in
    its module blob), else ``cpu``: read from the file, so it works for libraries of other architectures
    too, which cannot be loaded here."""
    return "opencl" if b"__kernel" in require_file(path, "library").read_bytes() else "cpu"


def library_extensions(path: str | os.PathLike) -> tuple[str, ...]:
    """The OpenCL extensions a library's kernels need, read from its embedded OpenCL source:
    ``cl_khr_fp16`` for fp16 kernels (TVM's code declares ``half`` variables, legal only with it; without
    it the device's compiler stops at the ``#error`` TVM puts there)."""
    return ("cl_khr_fp16",) if b"cl_khr_fp16" in require_file(path, "library").read_bytes() else ()


def local_device(device: str = "cpu", extensions: tuple[str, ...] = ()) -> tvm.runtime.Device:
    """This machine's ``cpu``, or its first ``opencl`` device with ``extensions`` (loading TVM's OpenCL
    runtime for it; a one-line error when no device has them)."""
    if device not in DEVICES:
        raise UserError(f"unknown device {device!r} (choose from {', '.join(DEVICES)})")
    if device == "opencl":
        return opencl_device(extensions)
    return tvm.cpu()


def _device_for(path: str | os.PathLike, device: str) -> tvm.runtime.Device:
    """The local ``device`` that can run the library at ``path`` (an OpenCL one with its extensions)."""
    return local_device(device, library_extensions(path) if device == "opencl" else ())


def load_local(path: str | os.PathLike, device: str = "cpu") -> relax.VirtualMachine:
    """Load a host-architecture library into a Relax VM on the local ``device`` (``DEVICES``); a library
    must have OpenCL kernels exactly when it runs on ``opencl``."""
    arch, host = library_arch(path), platform.machine()
    if arch != host:
        raise UserError(f"{path} is built for {arch}, this machine is {host}: "
                        "run it on a device (RPC) instead of locally")
    dev = _device_for(path, device)  # before loading: an OpenCL module needs the runtime to load
    try:
        lib = tvm.runtime.load_module(str(path))
    except RuntimeError as err:
        raise UserError(f"cannot load {path}: {first_line(err)}") from None
    has_opencl = _has_module(lib, "opencl")
    if has_opencl != (device == "opencl"):
        built = "an OpenCL target" if has_opencl else "a CPU target"
        raise UserError(f"{path} is built for {built}: run it with --device {'opencl' if has_opencl else 'cpu'}")
    return relax.VirtualMachine(lib, dev)


def _has_module(module: tvm.runtime.Module, kind: str) -> bool:
    """Whether ``module`` or a module it imports is of ``kind``."""
    return module.kind == kind or any(_has_module(sub, kind) for sub in module.imports)


def run_local(path: str | os.PathLike, data: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Run ``main`` of the library at ``path`` on one input array on the local ``device`` and return its
    output."""
    vm = load_local(path, device)
    dev = _device_for(path, device)
    try:
        return vm["main"](tvm.runtime.tensor(np.ascontiguousarray(data), dev)).numpy()
    except (RuntimeError, ValueError, TypeError) as err:
        expected = re.search(r"annotation=R\.Tensor\(\(([\d, ]*)\), dtype=\"(\w+)\"", str(err))
        if expected:
            raise UserError(f"input mismatch: input is {data.dtype} {tuple(data.shape)}, {path} expects "
                            f"{expected.group(2)} ({expected.group(1)})") from None
        raise UserError(f"running {path} failed on input {data.dtype} {tuple(data.shape)}: "
                        f"{first_line(err)}") from None

