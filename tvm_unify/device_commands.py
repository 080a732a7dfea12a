"""CLI subcommands for devices: ``device start|stop|status``, ``devices``, ``bench``, and ``run``'s RPC options.

Thin like the rest of the CLI: parse, build ``DeviceSpec``s, call ``rpc``/``bench``/``device``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .errors import UserError


def add_rpc_options(p: argparse.ArgumentParser, many: bool) -> None:
    """Where to run: ``--rpc host:port`` or ``--tracker host:port --key KEY`` (repeatable when ``many``)."""
    action = "append" if many else "store"
    p.add_argument("--rpc", action=action, metavar="HOST:PORT", help="an RPC server (device) address"
                   + (" (repeat for several devices)" if many else ""))
    p.add_argument("--tracker", metavar="HOST:PORT", help="a TVM RPC tracker to request devices from")
    p.add_argument("--key", action=action, help="device key on the tracker (e.g. arm)"
                   + (" (repeat for several kinds)" if many else ""))
    p.add_argument("--priority", type=int, default=1, help="tracker request priority (higher goes first)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for a free device on the tracker (default: 60)")
    p.add_argument("--reference", help="expected output (.npy): check the device's output against it")
    p.add_argument("--rtol", type=float, default=1e-4,
                   help="allowed max abs error relative to the reference's largest magnitude (default 1e-4)")


def device_specs(args: argparse.Namespace) -> list:
    """The devices the options name, in order: direct addresses first, then tracker keys."""
    from .rpc import DeviceSpec, parse_address

    rpcs = _as_list(args.rpc)
    keys = _as_list(args.key)
    if keys and not args.tracker:
        raise UserError("--key needs --tracker host:port")
    if args.tracker and not keys:
        raise UserError("--tracker needs --key KEY (the kind of device to request)")
    specs = [DeviceSpec(*parse_address(a, "--rpc address")) for a in rpcs]
    if args.tracker:
        host, port = parse_address(args.tracker, "--tracker address")
        specs += [DeviceSpec(host, port, key, args.priority, args.timeout) for key in keys]
    return specs


def _as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def wants_device(args: argparse.Namespace) -> bool:
    """True when ``run`` was asked to use a device instead of the local CPU."""
    return bool(args.rpc or args.tracker or args.key)


def run_on_device(args: argparse.Namespace, data: np.ndarray) -> np.ndarray:
    """``tvm-unify run LIB --rpc ...``: upload, load, run once on the device, return the output."""
    from .fileio import require_file
    from .rpc import load_remote, run_remote, with_device

    library = require_file(args.library, "library")
    specs = device_specs(args)
    if len(specs) != 1:
        raise UserError("run uses one device: give either --rpc or --tracker with --key")
    spec = specs[0]
    out = with_device(spec, lambda session: run_remote(load_remote(session, library), [data]))
    print(f"ran {library.name} on {spec.label}")
    return out


def check_reference(args: argparse.Namespace, out: np.ndarray) -> None:
    """With ``--reference``: compare and say so, or fail with the error figure."""
    from .rpc import load_reference, max_error

    ref = load_reference(args.reference)
    if ref is None:
        return
    err = max_error(out, ref, Path(args.library).name, args.rpc or args.key or "this machine")
    allowed = args.rtol * float(np.abs(ref).max())
    if not err <= allowed:
        raise UserError(f"output differs from {args.reference}: max abs error {err:.3g} > {allowed:.3g}")
    print(f"output matches {args.reference} (max abs error {err:.2e})")


def _cmd_bench(args: argparse.Namespace) -> None:
    from .bench import BenchOptions, failed_checks, format_table, run_bench, write_json, write_markdown
    from .fileio import require_file
    from .rpc import load_reference

    if args.reference and not args.input:
        raise UserError("--reference needs --input: the input the reference output was computed from")
    libraries = [require_file(lib, "library") for lib in args.libraries]
    specs = device_specs(args)
    inputs = [_load_input(args.input)] if args.input else None
    options = BenchOptions(args.warmup, args.repeat, args.number, args.count, args.rtol, args.retries)
    results = run_bench(libraries, specs, inputs, load_reference(args.reference), options, local=args.local)
    print(format_table(results))
    if any(r.emulated for r in results):
        from .bench import EMULATED_NOTE

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


def _load_input(path: str) -> np.ndarray:
    from .fileio import require_file

    try:
        return np.load(require_file(path, "input file"), allow_pickle=False)
    except (ValueError, OSError) as err:
        raise UserError(f"not a .npy array file: {path} ({err})") from None


def _cmd_devices(args: argparse.Namespace) -> None:
    from .rpc import format_tracker_summary, parse_address, tracker_summary

    print(format_tracker_summary(tracker_summary(*parse_address(args.tracker, "--tracker address"))))


def _cmd_device_start(args: argparse.Namespace) -> None:
    from .device import start_device

    state = start_device(args.port, args.host, args.tracker, args.key, args.cpu)
    where = f", registered with tracker {state.tracker} as {state.key!r}" if state.tracker else ""
    print(f"emulated aarch64 device on {state.host}:{state.port} (pid {state.pid}, qemu cpu {state.qemu_cpu}, "
          f"instruction counting {'on' if state.counting else 'off'}{where}); stop it with "
          f"`tvm-unify device stop --port {state.port}`")


def _cmd_device_stop(args: argparse.Namespace) -> None:
    from .device import stop_device

    state = stop_device(args.port)
    print(f"stopped the emulated device on port {args.port} (pid {state.pid})" if state
          else f"no emulated device recorded on port {args.port}")


def _cmd_device_status(args: argparse.Namespace) -> None:
    from .device import device_status, format_status

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
