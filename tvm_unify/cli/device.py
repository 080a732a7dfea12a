"""``tvm-unify bench``, ``devices`` and ``device start|stop|status``: parse, build ``DeviceSpec``s, call
the runtime (``runtime/bench.py``, ``runtime/rpc.py``) or the emulated device (``device/emulator.py``)."""

from __future__ import annotations

import argparse

from ..errors import UserError
from .rpc_options import add_rpc_options, device_specs


def _cmd_bench(args: argparse.Namespace) -> None:
    from ..runtime.bench import BenchOptions, failed_checks, format_table, run_bench, write_json, write_markdown
    from ..fileio import load_npy, require_file
    from ..runtime.reference import load_reference

    if args.reference and not args.input:
        raise UserError("--reference needs --input: the input the reference output was computed from")
    if args.profile and not args.local:
        raise UserError("--profile times kernels on this host: add --local")
    libraries = [require_file(lib, "library") for lib in args.libraries]
    specs = device_specs(args)
    inputs = [load_npy(args.input, "input file")] if args.input else None
    options = BenchOptions(args.warmup, args.repeat, args.number, args.count, args.rtol, args.retries)
    results = run_bench(libraries, specs, inputs, load_reference(args.reference), options, local=args.local)
    print(format_table(results))
    if any(r.emulated for r in results):
        from ..runtime.bench import EMULATED_NOTE

        print(f"note: {EMULATED_NOTE}")
    if args.json:
        write_json(results, args.json)
        print(f"wrote {args.json}")
    if args.markdown:
        png = write_markdown(results, args.markdown, title=args.title)
        print(f"wrote {args.markdown} and {png}")
    bad = failed_checks(results)
    if bad:
        raise UserError("output differs from the reference: " + ", ".join(
            f"{r.library} on {r.device} (max abs error {r.max_abs_err:.3g})" for r in bad))
    if args.profile:
        _print_profiles(libraries, inputs)


def _print_profiles(libraries: list, inputs: list | None) -> None:
    """Where each host library's time goes, kernel by kernel (``runtime/profile.py``)."""
    import tvm

    from ..runtime.bench import random_input
    from ..runtime.local import load_local
    from ..runtime.profile import format_breakdown, kernel_breakdown
    from ..runtime.rpc import probe_input

    for library in libraries:
        vm = load_local(library)
        arrays = inputs or [random_input(*probe_input(vm, tvm.cpu(), library.name))]
        print(f"\n{library.name}: time per function, one inference on this host")
        print(format_breakdown(kernel_breakdown(vm, [tvm.runtime.tensor(a) for a in arrays])))


def _cmd_devices(args: argparse.Namespace) -> None:
    from ..runtime.rpc import format_tracker_summary, parse_address, tracker_summary

    print(format_tracker_summary(tracker_summary(*parse_address(args.tracker, "--tracker address"))))


def _cmd_device_start(args: argparse.Namespace) -> None:
    from ..device.emulator import start_device

    state = start_device(args.port, args.host, args.tracker, args.key, args.cpu)
    where = f", registered with tracker {state.tracker} as {state.key!r}" if state.tracker else ""
    print(f"emulated aarch64 device on {state.host}:{state.port} (pid {state.pid}, qemu cpu {state.qemu_cpu}, "
          f"instruction counting {'on' if state.counting else 'off'}{where}); stop it with "
          f"`tvm-unify device stop --port {state.port}`")


def _cmd_device_stop(args: argparse.Namespace) -> None:
    from ..device.emulator import stop_device

    state = stop_device(args.port)
    print(f"stopped the emulated device on port {args.port} (pid {state.pid})" if state
          else f"no emulated device recorded on port {args.port}")


def _cmd_device_status(args: argparse.Namespace) -> None:
    from ..device.emulator import device_status, format_status

    print(format_status(device_status(args.port)))


def register(sub: "argparse._SubParsersAction") -> None:
    """Add ``device``, ``devices`` and ``bench`` to the CLI."""
    p = sub.add_parser("bench", help="time (and check) libraries on devices over RPC; table, JSON, markdown+PNG")
    p.add_argument("libraries", nargs="+", help="shared libraries to compare (the first is the baseline)")
    add_rpc_options(p, many=True)
    p.add_argument("--local", action="store_true",
                   help="also run the libraries on this machine (host builds), without RPC")
    p.add_argument("--input", help="input array (.npy); default: fixed-seed random of the model's input shape")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before timing (default 1)")
    p.add_argument("--repeat", type=int, default=10, help="timed rounds (default 10)")
    p.add_argument("--number", type=int, default=1, help="calls per round (default 1)")
    p.add_argument("--count", action="store_true",
                   help="also count aarch64 instructions of one call (emulated device only; exact)")
    p.add_argument("--retries", type=int, default=1,
                   help="with a tracker: retry on another device of the key if one is lost (default 1)")
    p.add_argument("--json", help="write all measurements here (.json)")
    p.add_argument("--markdown", help="write a markdown report here (.md), with a PNG chart beside it")
    p.add_argument("--title", default="Benchmark", help="heading of the markdown report")
    p.add_argument("--profile", action="store_true",
                   help="with --local: also print where each library's time goes, kernel by kernel")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("devices", help="list a tracker's device keys, free devices and waiting requests")
    p.add_argument("--tracker", required=True, metavar="HOST:PORT", help="the TVM RPC tracker")
    p.set_defaults(func=_cmd_devices)

    p = sub.add_parser("device", help="the emulated aarch64 device (qemu): start, stop, status")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    start = actions.add_parser("start", help="start it (sets it up on first use, cached)")
    start.add_argument("--port", type=int, default=9090, help="RPC port (default 9090)")
    start.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    start.add_argument("--tracker", metavar="HOST:PORT", help="register with this tracker")
    start.add_argument("--key", help="device key to register under (with --tracker), e.g. arm")
    start.add_argument("--cpu", default="max",
                       help="QEMU_CPU model (default max: all features; cortex-a72 = Raspberry Pi 4 class)")
    start.set_defaults(func=_cmd_device_start)
    stop = actions.add_parser("stop", help="stop it (its whole process group)")
    stop.add_argument("--port", type=int, default=9090, help="RPC port (default 9090)")
    stop.set_defaults(func=_cmd_device_stop)
    status = actions.add_parser("status", help="show running emulated devices")
    status.add_argument("--port", type=int, help="only this port (default: all)")
    status.set_defaults(func=_cmd_device_status)
