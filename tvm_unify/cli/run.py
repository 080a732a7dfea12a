"""``tvm-unify run``: one input through a library, on this machine or on a device over RPC."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..errors import UserError
from .rpc_options import add_rpc_options, device_specs


def _cmd_run(args: argparse.Namespace) -> None:
    from ..fileio import atomic_output, load_npy
    from ..runtime.local import run_local

    data = load_npy(args.input, "input file")
    on_device = bool(args.rpc or args.tracker or args.key)
    if on_device and args.device != "cpu":
        raise UserError("--device picks a device of this machine: over RPC the device follows the library")
    out = _run_on_device(args, data) if on_device else run_local(args.library, data, args.device)
    _check_reference(args, out)
    if args.output:
        with atomic_output(args.output, suffix=".npy") as tmp:
            np.save(tmp, out)
        print(f"wrote {args.output} (shape {out.shape})")
    else:
        print(np.array2string(out, precision=5, threshold=40))


def _run_on_device(args: argparse.Namespace, data: np.ndarray) -> np.ndarray:
    """Upload, load, run once on the one device the options name, return the output."""
    from ..fileio import require_file
    from ..runtime.rpc import load_remote, run_remote, with_device

    library = require_file(args.library, "library")
    specs = device_specs(args)
    if len(specs) != 1:
        raise UserError("run uses one device: give either --rpc or --tracker with --key")
    spec = specs[0]
    out = with_device(spec, lambda session: run_remote(load_remote(session, library), [data]))
    print(f"ran {library.name} on {spec.label}")
    return out


def _check_reference(args: argparse.Namespace, out: np.ndarray) -> None:
    """With ``--reference``: compare and say so, or fail with the error figure."""
    from ..runtime.reference import compare, load_reference

    ref = load_reference(args.reference)
    if ref is None:
        return
    where = args.rpc or args.key or ("this machine" if args.device == "cpu" else f"this machine's {args.device}")
    agreement = compare(out, ref, args.rtol, f"{Path(args.library).name} on {where}")
    if not agreement.ok:
        raise UserError(f"output differs from {args.reference}: max abs error {agreement.max_abs_err:.3g} > "
                        f"{agreement.allowed:.3g}")
    print(f"output matches {args.reference} (max abs error {agreement.max_abs_err:.2e})")


def register(sub: "argparse._SubParsersAction") -> None:
    """Add ``run`` to the CLI."""
    p = sub.add_parser("run", help="run a library on a .npy input, locally or on a device over RPC")
    p.add_argument("library", help="shared library from `tvm-unify compile`")
    p.add_argument("--input", required=True, help="input array (.npy)")
    p.add_argument("-o", "--output", help="write the output array here (.npy); default: print it")
    p.add_argument("--device", choices=["cpu", "opencl"], default="cpu",
                   help="local device: cpu, or opencl for libraries built for an OpenCL target (e.g. "
                        "--target opencl; PoCL without a GPU) (default: cpu)")
    add_rpc_options(p, many=False)
    p.set_defaults(func=_cmd_run)
