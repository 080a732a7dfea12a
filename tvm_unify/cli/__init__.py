"""The ``tvm-unify`` command line: one thin module per command group.

Every command only parses arguments, calls one library verb and prints; a ``UserError`` anywhere
becomes one line on stderr and exit status 2, never a traceback. Modules: ``compile`` (targets,
export-builtin, compile), ``run``, ``device`` (bench, devices, device), ``unify`` (unify, inspect),
``demo``, ``tune``; ``rpc_options`` holds the device-addressing options ``run`` and ``bench`` share.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from ..errors import UserError
from . import compile as compile_commands
from . import demo, device, run, tune, unify

Registrar = Callable[["argparse._SubParsersAction"], None]
REGISTRARS: list[Registrar] = [compile_commands.register, run.register, demo.register, unify.register,
                               device.register, tune.register]


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
