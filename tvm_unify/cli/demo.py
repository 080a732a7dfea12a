"""``tvm-unify demo``: the main job end to end on a built-in model."""

from __future__ import annotations

import argparse


def _cmd_demo(args: argparse.Namespace) -> None:
    from ..demo import run_demo

    run_demo(model=args.model, workdir=args.workdir, epochs=args.epochs, device=not args.no_device)


def register(sub: "argparse._SubParsersAction") -> None:
    """Add ``demo`` to the CLI."""
    p = sub.add_parser("demo", help="train-unify a built-in model, compile it for host and arm, run both "
                                    "(arm on the emulated device), report")
    p.add_argument("--model", default="digits-cnn",
                   help="built-in model to train-unify (digits-cnn or mlp train in seconds; default: digits-cnn)")
    p.add_argument("--workdir", default="demo-out", help="where the demo writes its files (default: demo-out)")
    p.add_argument("--epochs", type=int, default=12, help="training epochs in all (default: 12)")
    p.add_argument("--no-device", action="store_true",
                   help="skip the emulated aarch64 device step (no qemu set-up)")
    p.set_defaults(func=_cmd_demo)
