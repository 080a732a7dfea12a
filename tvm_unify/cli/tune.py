"""``tvm-unify tune``: tune a model's kernels into the records ``compile`` applies."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..errors import UserError

RUNNERS = ("local", "rpc", "count")
KERNELS = ("all", "unified", "planar", "dense")  # tuning.model.KERNELS, without importing TVM for --help


def _runner(args: argparse.Namespace, preset):
    """The runner the options name: this machine by default, a device with --rpc / --tracker."""
    from ..runtime.rpc import DeviceSpec, parse_address
    from ..tuning.runners import LocalRunner, RemoteRunner

    runner = args.runner or ("rpc" if args.rpc or args.tracker else "local")
    if runner == "local":
        if args.rpc or args.tracker:
            raise UserError("--runner local measures on this machine: drop --rpc/--tracker, or use --runner rpc")
        if not (preset.is_host and preset.device == "cpu"):
            raise UserError(f"target {preset.name} does not run on this machine: tune it on a device "
                            "(--rpc HOST:PORT, --tracker HOST:PORT --key KEY) or with --runner count")
        return LocalRunner()
    if args.tracker:
        if not args.key:
            raise UserError("--tracker needs --key KEY (the kind of device to request)")
        spec = DeviceSpec(*parse_address(args.tracker, "--tracker address"), args.key, timeout=args.timeout)
    elif args.rpc:
        spec = DeviceSpec(*parse_address(args.rpc, "--rpc address"))
    else:
        raise UserError(f"--runner {runner} needs a device: --rpc HOST:PORT or --tracker HOST:PORT --key KEY")
    return RemoteRunner(spec, preset, args.timeout, count=runner == "count")


class Progress:
    """A one-line progress bar on stderr (a line per tenth when stderr is not a terminal)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.shown = -1

    def __call__(self, done: int, total: int) -> None:
        fraction = min(done / max(total, 1), 1.0)
        elapsed = time.perf_counter() - self.start
        bar = "#" * int(fraction * 30)
        line = f"[{bar:30s}] {done}/{total} trials, {elapsed / 60:.1f} min"
        if sys.stderr.isatty():
            print("\r" + line, end="", file=sys.stderr, flush=True)
        elif int(fraction * 10) > self.shown:
            self.shown = int(fraction * 10)
            print(line, file=sys.stderr, flush=True)


def _cost(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value * 1e6:.1f} us" if unit == "s" else f"{value / 1e3:.1f} k insn"


def table(rows) -> str:
    """The per-task table: task, FLOPs, trials, default and best cost, speed-up, what compile uses."""
    lines = [f"{'kind':8s} {'MFLOP':>8s} {'trials':>6s} {'default':>12s} {'best':>12s} {'speed-up':>8s}  kept  task"]
    for r in rows:
        speedup = f"{r.speedup:.2f}x" if r.speedup else "-"
        lines.append(f"{r.kind:8s} {r.flops / 1e6:8.2f} {r.trials:6d} {_cost(r.default, r.unit):>12s} "
                     f"{_cost(r.best, r.unit):>12s} {speedup:>8s}  {'tuned' if r.tuned else 'dflt '}  {r.name}")
    return "\n".join(lines)


def _cmd_tune(args: argparse.Namespace) -> None:
    from ..fileio import require_file
    from ..targets import load_target
    from ..tuning.model import tune_model

    model = require_file(args.model, "model file")
    if args.trials is not None and args.trials < 1:
        raise UserError("--trials must be at least 1")
    preset = load_target(args.target)
    runner = _runner(args, preset)
    directory = Path(args.schedules) / preset.name
    rows = tune_model(model, preset, directory, runner, args.trials, args.time_budget, args.mode, args.dense,
                      args.threads, log=lambda line: print(line, flush=True), progress=Progress(),
                      kernels=args.kernels)
    print(file=sys.stderr)
    print(table(rows))
    tuned = sum(r.tuned for r in rows)
    print(f"records for target {preset.name} in {directory} ({runner.label} runner): {tuned} of {len(rows)} "
          f"kernels tuned; compile with --schedules {args.schedules}")


def register(sub: "argparse._SubParsersAction") -> None:
    """Add ``tune`` to the CLI."""
    p = sub.add_parser("tune", help="tune a model's kernels (knob search for unified and planar kernels + "
                                    "meta-schedule for dense kernels, XGBoost cost models) into tuning records "
                                    "compile uses")
    p.add_argument("model", help="TorchScript file (.pt)")
    p.add_argument("--target", default="host", help="preset name or target .json (default: host)")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--trials", type=int, help="measured candidates in all, split over the kernels by "
                                                   "FLOPs x occurrences")
    budget.add_argument("--time-budget", type=float, metavar="SECONDS",
                        help="tune until this many seconds have passed: no new batch starts after that, and "
                             "meta-schedule stops at its first batch measured after it (resumable like --trials)")
    p.add_argument("--schedules", default="schedules", metavar="DIR",
                   help="records root: writes DIR/<target>/ (default: ./schedules; compile --schedules DIR uses it)")
    p.add_argument("--runner", choices=RUNNERS,
                   help="local (this machine; default), rpc (a device's own timer), count (exact instruction "
                        "counts on the emulated aarch64 device: a proxy for ARM speed)")
    p.add_argument("--rpc", metavar="HOST:PORT", help="the device's RPC server")
    p.add_argument("--tracker", metavar="HOST:PORT", help="a TVM RPC tracker to request the device from")
    p.add_argument("--key", help="device key on the tracker")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds a remote measurement may take before it fails (a hung device; default 60)")
    p.add_argument("--mode", choices=["fp32", "int8"], default="fp32", help="numerics of the unified kernels")
    p.add_argument("--dense", action="store_true", help="tune the plain model (no unified kernels)")
    p.add_argument("--kernels", choices=KERNELS, default="all",
                   help="which kernels get trials: unified layers, planar (depthwise and stem) convs, dense "
                        "kernels (default: all; meta-schedule on dense kernels is the slow part)")
    p.add_argument("--threads", type=int, default=2, help="meta-schedule builder/runner threads (default 2)")
    p.set_defaults(func=_cmd_tune)
