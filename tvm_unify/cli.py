"""The ``tvm-unify`` command line: thin subcommands over library functions.

Every command only parses arguments and calls the library; a ``UserError`` anywhere becomes one line
on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .device_commands import add_rpc_options
from .device_commands import register as register_device_commands
from .errors import UserError
from .unify.commands import register as register_unify

Registrar = Callable[["argparse._SubParsersAction"], None]


def _cmd_targets(args: argparse.Namespace) -> None:
    from .targets import available_targets, load_target

    for name in available_targets():
        preset = load_target(name)
        print(f"{name:10s} {preset.arch:8s} {preset.description}")


def _cmd_export_builtin(args: argparse.Namespace) -> None:
    from .bn_calibration import calibrate_batchnorm
    from .models import get_builtin
    from .torchscript import save_torchscript

    builtin = get_builtin(args.name)
    model = calibrate_batchnorm(builtin.factory(), builtin.input_shape, seed=args.seed)
    save_torchscript(model, args.output, builtin.input_shape, {"model": builtin.name})
    print(f"wrote {args.output} ({builtin.name}, input {builtin.input_shape}, BatchNorm-calibrated)")


def _cmd_compile(args: argparse.Namespace) -> None:
    from .compiler import compile_model
    from .fileio import require_file
    from .frontend import parse_shape
    from .passes import report_table
    from .targets import android_preset, load_target

    shape = parse_shape(args.input_shape) if args.input_shape else None
    preset = load_target(args.target)
    if args.android_ndk:
        preset = android_preset(preset, args.android_ndk)
    samples = _load_npy(require_file(args.calibrate, "calibration file")) if args.calibrate else None
    result = compile_model(args.model, preset, args.output, shape, mode=args.mode, dense=args.dense,
                           calibration=samples)
    if result.report:
        print(report_table(result.report))
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
    print(f"wrote {result.output} for target {result.target} (input {result.input_shape}; {stages})")


def _cmd_run(args: argparse.Namespace) -> None:
    from .device_commands import check_reference, run_on_device, wants_device
    from .fileio import atomic_output, require_file
    from .runner import run_local

    data = _load_npy(require_file(args.input, "input file"))
    out = run_on_device(args, data) if wants_device(args) else run_local(args.library, data)
    check_reference(args, out)
    if args.output:
        with atomic_output(args.output, suffix=".npy") as tmp:
            np.save(tmp, out)
        print(f"wrote {args.output} (shape {out.shape})")
    else:
        print(np.array2string(out, precision=5, threshold=40))


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise UserError(f"not a .npy array file: {path} ({err})") from None


def _cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(model=args.model, workdir=args.workdir, epochs=args.epochs, device=not args.no_device)


def _register_core(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser("targets", help="list the bundled device presets")
    p.set_defaults(func=_cmd_targets)

    p = sub.add_parser("export-builtin", help="write a built-in model as TorchScript (BatchNorm-calibrated)")
    p.add_argument("name", help="built-in model name (digits-cnn, mlp, resnet18, resnet18-224, mobilenetv2, "
                                "mobilenetv2-224)")
    p.add_argument("-o", "--output", required=True, help="output .pt file")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and calibration batches")
    p.set_defaults(func=_cmd_export_builtin)

    p = sub.add_parser("compile", help="compile a TorchScript model into a shared library for a target")
    p.add_argument("model", help="TorchScript file (.pt)")
    p.add_argument("--target", default="host",
                   help="preset name (see `tvm-unify targets`) or path to a target .json (default: host)")
    p.add_argument("-o", "--output", required=True, help="output shared library (.so)")
    p.add_argument("--input-shape", help="e.g. 1,3,32,32 (default: the shape stored in the model file)")
    p.add_argument("--android-ndk", metavar="DIR",
                   help="link for Android with this NDK's aarch64 clang (aarch64 targets only)")
    p.add_argument("--mode", choices=["fp32", "int8"], default="fp32",
                   help="numerics of the unified kernels: fp32, or int8 activations x +-1 weights (default: fp32)")
    p.add_argument("--calibrate", metavar="SAMPLES.npy",
                   help="int8 only: fix each layer's activation scale to max|input|/127 over these sample inputs "
                        "(N x input shape, or stacked along the batch axis); without it the int8 kernels compute "
                        "the scale from each input at run time")
    p.add_argument("--dense", action="store_true",
                   help="compile the plain model without unified kernels, for comparison")
    p.set_defaults(func=_cmd_compile)

    p = sub.add_parser("run", help="run a library on a .npy input, locally or on a device over RPC")
    p.add_argument("library", help="shared library from `tvm-unify compile`")
    p.add_argument("--input", required=True, help="input array (.npy)")
    p.add_argument("-o", "--output", help="write the output array here (.npy); default: print it")
    add_rpc_options(p, many=False)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("demo", help="train-unify a built-in model, compile it for host and arm, run both "
                                    "(arm on the emulated device), report")
    p.add_argument("--model", default="digits-cnn",
                   help="built-in model to train-unify (digits-cnn or mlp train in seconds; default: digits-cnn)")
    p.add_argument("--workdir", default="demo-out", help="where the demo writes its files (default: demo-out)")
    p.add_argument("--epochs", type=int, default=12, help="training epochs in all (default: 12)")
    p.add_argument("--no-device", action="store_true",
                   help="skip the emulated aarch64 device step (no qemu set-up)")
    p.set_defaults(func=_cmd_demo)


REGISTRARS: list[Registrar] = [_register_core, register_unify, register_device_commands]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tvm-unify",
        description="Compress networks by micro-structured weight unification and compile them with TVM "
                    "for edge devices (ARM CPUs, mobile GPUs).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as err:
        print(f"tvm-unify: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tvm-unify: interrupted", file=sys.stderr)
        return 130
    return 0
