"""Run an exported library locally with the Relax VM.

Only libraries built for this machine's architecture can load here; for others we say so up front
instead of letting the dynamic loader fail with an obscure message.
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

# ELF e_machine values of the architectures we build for.
_ELF_MACHINES = {62: "x86_64", 183: "aarch64", 40: "arm"}


def library_arch(path: str | os.PathLike) -> str:
    """The architecture an ELF shared library was built for (``x86_64``, ``aarch64``...)."""
    header = require_file(path, "library").read_bytes()[:20]
    if len(header) < 20 or header[:4] != b"\x7fELF":
        raise UserError(f"not a shared library (no ELF header): {path}")
    machine = int.from_bytes(header[18:20], "little")
    return _ELF_MACHINES.get(machine, f"ELF machine {machine}")


def load_local(path: str | os.PathLike) -> relax.VirtualMachine:
    """Load a host-architecture library into a Relax VM on the local CPU."""
    arch, host = library_arch(path), platform.machine()
    if arch != host:
        raise UserError(f"{path} is built for {arch}, this machine is {host}: "
                        "run it on a device (RPC) instead of locally")
    try:
        lib = tvm.runtime.load_module(str(path))
    except RuntimeError as err:
        raise UserError(f"cannot load {path}: {first_line(err)}") from None
    return relax.VirtualMachine(lib, tvm.cpu())


def run_local(path: str | os.PathLike, data: np.ndarray) -> np.ndarray:
    """Run ``main`` of the library at ``path`` on one input array and return its output."""
    vm = load_local(path)
    try:
        return vm["main"](tvm.runtime.tensor(np.ascontiguousarray(data))).numpy()
    except (RuntimeError, ValueError, TypeError) as err:
        expected = re.search(r"annotation=R\.Tensor\(\(([\d, ]*)\), dtype=\"(\w+)\"", str(err))
        if expected:
            raise UserError(f"input mismatch: input is {data.dtype} {tuple(data.shape)}, {path} expects "
                            f"{expected.group(2)} ({expected.group(1)})") from None
        raise UserError(f"running {path} failed on input {data.dtype} {tuple(data.shape)}: "
                        f"{first_line(err)}") from None

