"""Where to run: the device-addressing options ``run`` and ``bench`` share, and the specs they name."""

from __future__ import annotations

import argparse

from ..errors import UserError


def add_rpc_options(p: argparse.ArgumentParser, many: bool) -> None:
    """``--rpc host:port`` or ``--tracker host:port --key KEY`` (repeatable when ``many``), and the
    reference check."""
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
    from ..runtime.rpc import DeviceSpec, parse_address

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
