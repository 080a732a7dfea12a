"""Exact instruction counts of one call, INSIDE the aarch64 guest (qemu user mode with insn_count.c).

Shared by the guest RPC server (``server.py``: TVM models over RPC) and by programs run once in the
guest (``emulator.run_guest_python``: peer runtimes such as ONNX Runtime), so both count the same way:
the call runs between two marker syscalls, the plugin counts the calling thread's instructions, and
the counts are read back from the files the plugin writes. Guest-side code: standard library only.
"""

from __future__ import annotations

import ctypes
import gc
import os
from typing import Callable

MARKER_SYSCALL = 0x7475  # must match TVU_MARKER_NR in insn_count.c
MARK_START, MARK_STOP = 1, 2


def count_call(call: Callable[[], object], library_name: str) -> dict:
    """{"in_library", "total", "blocks"} of one ``call()``: instructions executed inside the code of the
    loaded shared object ``library_name`` (exact across runs), all instructions of the calling thread
    (interpreter, runtime, allocator: drifts slightly), and [address relative to the library's load
    base, instructions] per executed code block of the library. Warm the call up first: a first call
    allocates and initializes."""
    count_dir = os.environ.get("TVU_COUNT_DIR")
    if not count_dir:
        raise RuntimeError("this device was started without the instruction-counting plugin")
    lo, hi = code_range(library_name)
    out = os.path.join(count_dir, f"{os.getpid()}.count")
    blocks_file = out[:-len(".count")] + ".blocks"
    for stale in (out, blocks_file):
        if os.path.exists(stale):
            os.unlink(stale)
    syscall = ctypes.CDLL(None, use_errno=True).syscall
    syscall.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_ulong, ctypes.c_ulong]
    gc.disable()  # a collection inside the counted window would add interpreter noise
    try:
        syscall(MARKER_SYSCALL, MARK_START, lo, hi)
        call()
        syscall(MARKER_SYSCALL, MARK_STOP, 0, 0)
    finally:
        gc.enable()
    with open(out) as f:
        in_library, total = (int(v) for v in f.read().split())
    os.unlink(out)
    blocks = []
    if os.path.exists(blocks_file):
        base = load_base(library_name)
        with open(blocks_file) as f:
            blocks = [[int(a, 16) - base, int(n)] for a, n in (line.split() for line in f)]
        os.unlink(blocks_file)
    return {"in_library": in_library, "total": total, "blocks": blocks}


def _mappings(library_name: str) -> list[list[str]]:
    """The fields of every /proc/self/maps line of the loaded shared object ``library_name``."""
    with open("/proc/self/maps") as maps:
        return [fields for fields in (line.split() for line in maps)
                if len(fields) >= 6 and os.path.basename(fields[5]) == library_name]


def load_base(library_name: str) -> int:
    """Where the loaded library ``library_name`` starts (its ELF addresses are relative to this)."""
    return min(int(fields[0].split("-")[0], 16) for fields in _mappings(library_name))


def code_range(library_name: str) -> tuple[int, int]:
    """Lowest and highest address of the executable mappings of the loaded library ``library_name``."""
    ranges = [[int(v, 16) for v in fields[0].split("-")] for fields in _mappings(library_name) if "x" in fields[1]]
    if not ranges:
        raise RuntimeError(f"{library_name} is not loaded on this device")
    return min(r[0] for r in ranges), max(r[1] for r in ranges)
