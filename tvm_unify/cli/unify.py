"""``tvm-unify unify`` and ``tvm-unify inspect``: argument parsing over the unify library.

Training runs unchanged under torchrun, e.g.
``torchrun --nproc_per_node 2 -m tvm_unify unify digits-cnn --block 4x4 -o out.pt``: every rank trains,
rank 0 writes the file.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI builds every parser at start-up: keep torch out of it until a command runs
    from ..unify.pipeline import Schedule
    from ..unify.spec import UnifyConfig


def register(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser(
        "unify",
        help="unify a model's weights into pruned/unified micro-blocks (ADMM training or one-shot)",
        description="MODEL is a TorchScript file, a built-in model name or module.path:Factory importable "
                    "from the current directory. Without --one-shot the model is trained on built-in data "
                    "(dense epochs for fresh models, ADMM rounds, masked fine-tuning).",
    )
    p.add_argument("model", help="TorchScript file, built-in name (digits-cnn, mlp, resnet18, ...) or module:Factory")
    p.add_argument("-o", "--output", required=True, help="output TorchScript file (.pt) with the block spec")
    p.add_argument("--one-shot", action="store_true", help="project the weights once, no data, no training")
    spec = p.add_argument_group("block spec")
    spec.add_argument("--block", default="1x4", help="block rows (out channels) x cols (in channels) (default 1x4)")
    spec.add_argument("--sparsity", type=float, default=0.75, help="fraction of blocks pruned per layer (default 0.75)")
    spec.add_argument("--unified", type=float, default=1.0,
                      help="fraction of surviving blocks unified, the rest stay dense (default 1.0)")
    spec.add_argument("--layout", default="tap",
                      help="conv2d blocks per kernel tap (tap: out x in) or over the flattened in*kh*kw axis "
                           "(flat) (default tap)")
    spec.add_argument("--skip", default="", help="comma-separated module paths to keep dense")
    spec.add_argument("--layer", action="append", default=[], metavar="NAME:KEY=VAL[,KEY=VAL]",
                      help="per-layer override, e.g. features.3:block=4x4,sparsity=0.5 (repeatable)")
    spec.add_argument("--all-layers", action="store_true", help="also constrain the first and last layers")
    src = p.add_argument_group("model")
    src.add_argument("--weights", help="state dict (.pt) to load into a built-in or module:Factory model")
    src.add_argument("--input-shape", help="batch-1 input shape, e.g. 1,3,32,32 (default: the model's)")
    train = p.add_argument_group("training (without --one-shot)")
    train.add_argument("--data", help="built-in data set: digits or digits-rgb (default: fits the input shape)")
    train.add_argument("--epochs", type=int, help="total epoch budget, split dense/ADMM/fine-tune (default 20)")
    train.add_argument("--dense-epochs", type=int, help="dense epochs before ADMM (default 8; 0 with --weights)")
    train.add_argument("--rounds", type=int, help="ADMM rounds (default 4)")
    train.add_argument("--round-epochs", type=int, help="W-step epochs per ADMM round (default 2)")
    train.add_argument("--finetune-epochs", type=int, help="masked fine-tuning epochs (default 4)")
    train.add_argument("--rho", type=float, help="initial ADMM penalty (default 1e-2)")
    train.add_argument("--rho-growth", type=float, help="rho factor per round (default 1.3)")
    train.add_argument("--lr", type=float, help="Adam learning rate (default 2e-3)")
    train.add_argument("--batch-size", type=int, help="batch size per process (default 64)")
    train.add_argument("--seed", type=int, default=0, help="seed for initialization, shuffling, data (default 0)")
    train.add_argument("--device", choices=["cpu", "cuda"], help="default: CUDA when present")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_unify)

    p = sub.add_parser("inspect", help="per-layer block counts and storage of a unified model")
    p.add_argument("model", help="TorchScript file written by `tvm-unify unify`")
    p.set_defaults(func=_cmd_inspect)


def config_from_args(args: argparse.Namespace) -> "UnifyConfig":
    """The ``UnifyConfig`` the spec options describe."""
    from ..unify.spec import UnifyConfig, parse_block, parse_layer_override

    overrides = dict(parse_layer_override(text) for text in args.layer)
    skip = tuple(name.strip() for name in args.skip.split(",") if name.strip())
    return UnifyConfig(parse_block(args.block), args.sparsity, args.unified, args.layout, skip=skip,
                       layers=overrides, dense_first_last=not args.all_layers)


def _schedule_from_args(args: argparse.Namespace, pretrained: bool) -> "Schedule":
    from ..unify.pipeline import Schedule

    common = {k: getattr(args, k) for k in ("rho", "rho_growth", "lr", "batch_size", "seed")
              if getattr(args, k) is not None}
    schedule = (Schedule.from_epochs(args.epochs, pretrained, **common) if args.epochs
                else Schedule(**common, **({"dense_epochs": 0} if pretrained else {})))
    phases = {"dense_epochs": args.dense_epochs, "admm_rounds": args.rounds, "round_epochs": args.round_epochs,
              "finetune_epochs": args.finetune_epochs}
    return replace(schedule, **{k: v for k, v in phases.items() if v is not None})


def _cmd_unify(args: argparse.Namespace) -> None:
    import torch

    from ..models.calibration import calibrate_batchnorm
    from ..errors import UserError
    from ..frontend.importer import parse_shape
    from ..unify.export import export_unified
    from ..unify.inspect import format_summary, summarize
    from ..unify.pipeline import accuracy_metadata, train_unify, unify_
    from ..unify.sources import load_source
    from ..unify.train import Runtime

    config = config_from_args(args)
    shape = parse_shape(args.input_shape) if args.input_shape else None
    torch.manual_seed(args.seed)  # built-in and factory weights start from the seed
    source = load_source(args.model, shape, args.weights)
    metadata = dict(source.metadata)
    if args.one_shot:
        layers = unify_(source.model, config)
        if not source.trained:  # a fresh model: give it real activations so the file is worth compiling
            calibrate_batchnorm(source.model, source.input_shape, seed=args.seed)
        main = True
    else:
        if source.scripted:
            raise UserError("training needs the model's Python code: pass a built-in name or module:Factory "
                            "(with --weights for trained weights); TorchScript files take --one-shot")
        runtime = Runtime.setup(args.device)
        schedule = _schedule_from_args(args, source.trained)
        model, layers, report = train_unify(source.model, source.input_shape, config, schedule, data=args.data,
                                            runtime=runtime, progress=not args.no_progress)
        source.model, main = model, runtime.main
        metadata.update(accuracy_metadata(report))
    if main:
        export_unified(source.model, args.output, source.input_shape, layers, metadata)
        print(format_summary(summarize(args.output)))
        print(f"wrote {args.output}")


def _cmd_inspect(args: argparse.Namespace) -> None:
    from ..unify.inspect import format_summary, summarize

    print(format_summary(summarize(args.model)))
