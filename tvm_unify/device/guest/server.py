"""The emulated device's RPC server: runs INSIDE the aarch64 guest (qemu user mode), not on the host.

TVM's stock ``python -m tvm.exec.rpc_server`` launches its server in a ``popen_worker`` subprocess
through ``sys.executable``; a guest executable can only be exec'd with binfmt_misc, which CI machines
may not allow. This script runs the same server loop in-process instead (sessions are still forked,
which qemu handles without binfmt), and registers two device functions the host can call over RPC:
``tvm_unify.device_info`` and ``tvm_unify.count_instructions`` (exact counts via the qemu plugin).

Usage (guest): python3 server.py HOST PORT [TRACKER_HOST:PORT KEY]
"""

import json
import os
import platform
import signal
import sys

import tvm
import tvm_ffi
from tvm.rpc import server as rpc_server
from tvm.runtime.vm import VirtualMachine

from counting import count_call  # guest/counting.py, copied beside this script


def device_info():
    """JSON: what this device is, so reports can flag emulated timings."""
    return json.dumps({"emulated": True, "machine": platform.machine(), "qemu_cpu": os.environ.get("QEMU_CPU", ""),
                       "counting": bool(os.environ.get("TVU_COUNT_DIR")), "threads": os.environ.get("TVM_NUM_THREADS", "")})


def count_instructions(module, library_name, *args):
    """JSON {"kernels", "total", "blocks"}: instructions of one ``main`` call (after a warm-up call),
    counted by ``counting.count_call``; "kernels" only inside the library's code (exact across runs);
    "blocks": [address relative to the library's load base, instructions] per executed code block of the
    library, which the host maps to the library's symbols."""
    main = VirtualMachine(module, tvm.cpu())["main"]
    main(*args)
    counts = count_call(lambda: main(*args), library_name)
    return json.dumps({"kernels": counts["in_library"], "total": counts["total"], "blocks": counts["blocks"]})


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
