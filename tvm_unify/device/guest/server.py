"""The emulated device's RPC server: runs INSIDE the aarch64 guest (qemu user mode), not on the host.

TVM's stock ``python -m tvm.exec.rpc_server`` launches its server in a ``popen_worker`` subprocess
through ``sys.executable``; a guest executable can only be exec'd with binfmt_misc, which CI machines
may not allow. This script runs the same server loop in-process instead (sessions are still forked,
which qemu handles without binfmt), and registers two device functions the host can call over RPC:
``tvm_unify.device_info`` and ``tvm_unify.count_instructions`` (exact counts via the qemu plugin).

Usage (guest): python3 server.py HOST PORT [TRACKER_HOST:PORT KEY]
"""

import ctypes
import gc
import json
import os
import platform
import signal
import sys

import tvm
import tvm_ffi
from tvm.rpc import server as rpc_server
from tvm.runtime.vm import VirtualMachine

MARKER_SYSCALL = 0x7475  # must match TVU_MARKER_NR in insn_count.c
MARK_START, MARK_STOP = 1, 2


def device_info():
    """JSON: what this device is, so reports can flag emulated timings."""
    return json.dumps({"emulated": True, "machine": platform.machine(), "qemu_cpu": os.environ.get("QEMU_CPU", ""),
                       "counting": bool(os.environ.get("TVU_COUNT_DIR")), "threads": os.environ.get("TVM_NUM_THREADS", "")})


def count_instructions(module, library_name, *args):
    """JSON {"kernels", "total", "blocks"}: instructions of one ``main`` call (after a warm-up call),
    counted between two marker syscalls; "kernels" only inside the library's code (exact across runs);
    "blocks": [address relative to the library's load base, instructions] per executed code block of the
    library, which the host maps to the library's symbols."""
    count_dir = os.environ.get("TVU_COUNT_DIR")
    if not count_dir:
        raise RuntimeError("this device was started without the instruction-counting plugin")
    lo, hi = _code_range(library_name)
    out = os.path.join(count_dir, f"{os.getpid()}.count")
    main = VirtualMachine(module, tvm.cpu())["main"]
    main(*args)
    if os.path.exists(out):
        os.unlink(out)
    syscall = ctypes.CDLL(None, use_errno=True).syscall
    syscall.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_ulong, ctypes.c_ulong]
    gc.disable()  # a collection inside the counted window would add interpreter noise
    try:
        syscall(MARKER_SYSCALL, MARK_START, lo, hi)
        main(*args)
        syscall(MARKER_SYSCALL, MARK_STOP, 0, 0)
    finally:
        gc.enable()
    with open(out) as f:
        kernels, total = (int(v) for v in f.read().split())
    os.unlink(out)
    blocks = []
    base = _load_base(library_name)
    if os.path.exists(out[:-len(".count")] + ".blocks"):
        with open(out[:-len(".count")] + ".blocks") as f:
            blocks = [[int(a, 16) - base, int(n)] for a, n in (line.split() for line in f)]
        os.unlink(out[:-len(".count")] + ".blocks")
    return json.dumps({"kernels": kernels, "total": total, "blocks": blocks})


def _load_base(library_name):
    """Where the loaded library ``library_name`` starts (its ELF addresses are relative to this)."""
    with open("/proc/self/maps") as maps:
        starts = [int(line.split()[0].split("-")[0], 16) for line in maps
                  if len(line.split()) >= 6 and os.path.basename(line.split()[5]) == library_name]
    return min(starts)


def _code_range(library_name):
    """Lowest and highest address of the executable mappings of the loaded library ``library_name``."""
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and os.path.basename(fields[5]) == library_name and "x" in fields[1]:
                ranges.append([int(v, 16) for v in fields[0].split("-")])
    if not ranges:
        raise RuntimeError(f"{library_name} is not loaded on this device")
    return min(r[0] for r in ranges), max(r[1] for r in ranges)


def _surviving(serve):
    """Wrap the stock per-session handler so a crashed session (a kernel hitting an instruction the
    emulated CPU lacks, a segfault) is logged, its connection closed, and the device keeps serving,
    instead of its listen thread dying with the session."""

    def serve_one(sock, *args):
        cwd = os.getcwd()
        try:
            serve(sock, *args)
        except RuntimeError as err:
            code = str(err).rsplit(" ", 1)[-1]
            name = signal.Signals(-int(code)).name if code.startswith("-") and code[1:].isdigit() else code
            hint = " (an instruction this QEMU_CPU lacks?)" if name == "SIGILL" else ""
            print(f"tvm-unify device: session crashed with {name}{hint}; still serving", flush=True)
            os.chdir(cwd)
            sock.close()

    return serve_one


def main(argv):
    host, port = argv[1], int(argv[2])
    tracker = None
    key = ""
    if len(argv) >= 5:
        tracker_host, tracker_port = argv[3].rsplit(":", 1)
        tracker, key = (tracker_host, int(tracker_port)), argv[4]
    tvm_ffi.register_global_func("tvm_unify.device_info", device_info, override=True)
    tvm_ffi.register_global_func("tvm_unify.count_instructions", count_instructions, override=True)
    rpc_server._serving = _surviving(rpc_server._serving)
    bound = rpc_server._popen_start_rpc_server(host, port, port + 1, tracker_addr=tracker, key=key)
    print(f"tvm-unify emulated aarch64 device listening on {host}:{bound}", flush=True)  # device.READY_LINE
    rpc_server.PopenRPCServerState.current.thread.join()


if __name__ == "__main__":
    main(sys.argv)
