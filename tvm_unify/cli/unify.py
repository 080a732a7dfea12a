"""``tvm-unify unify`` and ``tvm-unify inspect``: argument parsing over the unify library.

Training runs unchanged under torchrun, e.g.
``torchrun --nproc_per_node 2 -m tvm_unify unify mypkg:Net --data ./images -o out.pt``: every rank trains
on its shard of the data (CUDA when present), rank 0 writes the file.

The library speaks of its parameters (``input_shape``); ``_in_flag_words`` turns those names into this
command's flags (``--input-shape``) in the one-line errors it prints.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import replace
from typing import TYPE_CHECKING, Callable

from ..errors import UserError

if TYPE_CHECKING:  # the CLI builds every parser at start-up: keep torch out of it until a command runs
    from ..data import DataOptions
    from ..unify.pipeline import Schedule
    from ..unify.spec import UnifyConfig


def register(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser(
        "unify",
        help="unify a model's weights into pruned/unified micro-blocks (ADMM training or one-shot)",
        description="MODEL is a TorchScript file, a built-in model name or module.path:Factory importable "
                    "from the current directory. Without --one-shot the model is trained (dense epochs for "
                    "fresh models, ADMM rounds, masked fine-tuning) on --data: a built-in set, an image "
                    "folder, an .npz file or module:factory.",
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
    train.add_argument("--data", help="built-in set (digits, digits-rgb; default: fits the input shape), an image "
                                      "folder (one sub-folder per class; train/ and val/ optional), an .npz file "
                                      "(x, y, optional x_val, y_val) or module:factory returning (train, val)")
    train.add_argument("--image-size", help="HxW images are resized to (default: the model input's)")
    train.add_argument("--mean", help="per-channel mean for image normalization, e.g. 0.485,0.456,0.406 (default 0.5)")
    train.add_argument("--std", help="per-channel std for image normalization (default 0.25)")
    train.add_argument("--val-fraction", type=float, help="share held out when the data has no validation split "
                                                          "(default 0.1)")
    train.add_argument("--epochs", type=int, help="total epoch budget, split dense/ADMM/fine-tune (default 20)")
    train.add_argument("--dense-epochs", type=int, help="dense epochs before ADMM (default 8; 0 with --weights)")
    train.add_argument("--rounds", type=int, help="ADMM rounds (default 8)")
    train.add_argument("--round-epochs", type=int, help="W-step epochs per ADMM round (default 1)")
    train.add_argument("--finetune-epochs", type=int, help="masked fine-tuning epochs (default 4)")
    train.add_argument("--rho", type=float, help="initial ADMM penalty (default: see docs/compression.md)")
    train.add_argument("--rho-growth", type=float, help="rho factor per round (default: the factor that reaches --rho-max at the last round)")
    train.add_argument("--rho-max", type=float, help="cap on rho, reached at the last round (default 128)")
    train.add_argument("--lr", type=float, help="Adam learning rate of the dense and fine-tuning phases")
    train.add_argument("--admm-lr", type=float, help="learning rate of the ADMM W-step")
    train.add_argument("--admm-optimizer", choices=["sgd", "adam"], help="optimizer of the ADMM W-step")
    train.add_argument("--batch-size", type=int, help="batch size per process (default 64)")
    train.add_argument("--seed", type=int, default=0, help="seed for initialization, shuffling, data (default 0)")
    train.add_argument("--device", choices=["cpu", "cuda"], help="default: CUDA when present")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_in_flag_words(_cmd_unify, p))

    p = sub.add_parser("inspect", help="per-layer block counts and storage of a unified model")
    p.add_argument("model", help="TorchScript file written by `tvm-unify unify`")
    p.set_defaults(func=_cmd_inspect)


def _in_flag_words(command: Callable[[argparse.Namespace], None],
                   parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], None]:
    """``command`` with the library's parameter names in its errors spelled as this parser's flags."""
    flags = {a.dest: a.option_strings[-1] for a in parser._actions if a.option_strings and "_" in a.dest}

    def run(args: argparse.Namespace) -> None:
        try:
            command(args)
        except UserError as err:
            message = re.sub(r"\b(" + "|".join(flags) + r")\b", lambda m: flags[m[1]], str(err))
            raise UserError(message) from None

    return run


def config_from_args(args: argparse.Namespace) -> "UnifyConfig":
    """The ``UnifyConfig`` the spec options describe (``--layer`` fields override the defaults)."""
    from ..unify.spec import UnifyConfig, parse_block, parse_layer_override

    skip = tuple(name.strip() for name in args.skip.split(",") if name.strip())
    base = UnifyConfig(parse_block(args.block), args.sparsity, args.unified, args.layout, skip=skip,
                       dense_first_last=not args.all_layers)
    layers = {}
    for text in args.layer:
        name, fields = parse_layer_override(text)
        layers[name] = replace(base.default, **fields)
    return replace(base, layers=layers)


def _schedule_from_args(args: argparse.Namespace, pretrained: bool) -> "Schedule":
    from ..unify.pipeline import Schedule

    names = ("rho", "rho_growth", "rho_max", "lr", "admm_lr", "admm_optimizer", "batch_size", "seed")
    common = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    schedule = (Schedule.from_epochs(args.epochs, pretrained, **common) if args.epochs
                else Schedule(**common, **({"dense_epochs": 0} if pretrained else {})))
    phases = {"dense_epochs": args.dense_epochs, "admm_rounds": args.rounds, "round_epochs": args.round_epochs,
              "finetune_epochs": args.finetune_epochs}
    return replace(schedule, **{k: v for k, v in phases.items() if v is not None})


def _data_options_from_args(args: argparse.Namespace) -> "DataOptions":
    from ..data import DataOptions

    def floats(text: str) -> tuple[float, ...]:
        try:
            return tuple(float(v) for v in text.split(","))
        except ValueError:
            raise UserError(f"expected comma-separated numbers, got {text!r}") from None

    fields: dict[str, object] = {"seed": args.seed}
    if args.image_size:
        fields["image_size"] = _parse_size(args.image_size)
    for name in ("mean", "std"):
        if getattr(args, name):
            fields[name] = floats(getattr(args, name))
    if args.val_fraction is not None:
        fields["val_fraction"] = args.val_fraction
    return DataOptions(**fields)


def _parse_size(text: str) -> tuple[int, int]:
    """``HxW`` (e.g. ``32x32``) as ``(H, W)``."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or min(int(match[1]), int(match[2])) <= 0:
        raise UserError(f"bad image size {text!r}: expected HxW, e.g. 32x32")
    return int(match[1]), int(match[2])


def _cmd_unify(args: argparse.Namespace) -> None:
    import torch

    from ..frontend.importer import parse_shape
    from ..models.calibration import calibrate_batchnorm
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
    main = True
    if args.one_shot:
        unify_(source.model, config)
        if not source.trained:  # a fresh model: give it real activations so the file is worth compiling
            calibrate_batchnorm(source.model, source.input_shape, seed=args.seed)
    else:
        if source.scripted:
            raise UserError("training needs the model's Python code: pass a built-in name or module:Factory "
                            "(with --weights for trained weights); TorchScript files take --one-shot")
        runtime = Runtime.setup(args.device)
        report = train_unify(source.model, config, _schedule_from_args(args, source.trained), data=args.data,
                             input_shape=source.input_shape, data_options=_data_options_from_args(args),
                             runtime=runtime, progress=not args.no_progress)
        main = runtime.main
        metadata.update(accuracy_metadata(report))
    if main:
        export_unified(source.model, args.output, config, input_shape=source.input_shape, metadata=metadata)
        print(format_summary(summarize(args.output)))
        print(f"wrote {args.output}")


def _cmd_inspect(args: argparse.Namespace) -> None:
    from ..unify.inspect import format_summary, summarize

    print(format_summary(summarize(args.model)))
