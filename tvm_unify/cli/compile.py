"""``tvm-unify targets``, ``export-builtin`` and ``compile``."""

from __future__ import annotations

import argparse


def _cmd_targets(args: argparse.Namespace) -> None:
    from ..targets import available_targets, load_target

    for name in available_targets():
        preset = load_target(name)
        print(f"{name:12s} {preset.arch:8s} {preset.device:7s} {preset.description}")


def _cmd_export_builtin(args: argparse.Namespace) -> None:
    from ..torchscript import save_torchscript
    from ..models import get_builtin
    from ..models.calibration import calibrate_batchnorm

    builtin = get_builtin(args.name)
    model = calibrate_batchnorm(builtin.factory(), builtin.input_shape, seed=args.seed)
    save_torchscript(model, args.output, builtin.input_shape, {"model": builtin.name})
    print(f"wrote {args.output} ({builtin.name}, input {builtin.input_shape}, BatchNorm-calibrated)")


def schedule_summary(result) -> str:
    """Per kernel, whether it runs a tuned schedule or the default, and which records were used."""
    if result.records is None:
        return "schedules: defaults (no tuning records for this target)"
    tuned = sum(v.startswith("tuned") for v in result.schedules.values())
    lines = [f"schedules: {tuned} of {len(result.schedules)} kernels tuned (records {result.records})"]
    lines += [f"  {source:13s} {kernel}" for kernel, source in result.schedules.items()]
    return "\n".join(lines)


def _error_bound(text: str) -> float:
    """A positive error bound (``inf`` allowed) for argparse."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number or inf, not {text!r}")
    return value


def _builtin_samples(model: str, shape: tuple[int, ...] | None):
    """Calibration samples from the built-in data set the file says its model was trained on (``unify``
    records it), or None: int8 scales are calibrated by default wherever sample data exists."""
    from ..data import DATASETS, calibration_samples
    from ..torchscript import load_torchscript

    _, metadata = load_torchscript(model)
    data, input_shape = metadata.get("data"), shape or tuple(metadata.get("input_shape", ()))
    if data not in DATASETS or not input_shape:
        return None
    samples = calibration_samples(data, tuple(input_shape))
    print(f"int8: activation scales calibrated on {len(samples)} training inputs of built-in {data}, the data the "
          "model was trained on (--per-call-scales: compute them per call instead)")
    return samples


def _cmd_compile(args: argparse.Namespace) -> None:
    from ..compiler import compile_model
    from ..errors import UserError
    from ..fileio import load_npy
    from ..frontend import DEFAULT_MAX_ERROR, parse_shape
    from ..passes import report_table
    from ..targets import android_preset, load_target
    from ..tuning.records import SHIPPED

    shape = parse_shape(args.input_shape) if args.input_shape else None
    preset = load_target(args.target)
    if args.android_ndk:
        preset = android_preset(preset, args.android_ndk)
    if args.per_call_scales and args.calibrate:
        raise UserError("--per-call-scales and --calibrate contradict each other: give one")
    samples = load_npy(args.calibrate, "calibration file") if args.calibrate else None
    if samples is None and args.mode == "int8" and not (args.dense or args.per_call_scales):
        samples = _builtin_samples(args.model, shape)
    if args.int8_max_error is not None and samples is None:
        raise UserError("--int8-max-error needs calibration samples (--calibrate SAMPLES.npy, or a model trained "
                        "on built-in data); the layers are chosen on them")
    schedules = None if args.no_schedules else (args.schedules or SHIPPED)
    result = compile_model(args.model, preset, args.output, shape, mode=args.mode, dense=args.dense,
                           calibration=samples, emit_source=args.emit_source, schedules=schedules,
                           precision=args.gpu_precision, int8_max_error=args.int8_max_error or DEFAULT_MAX_ERROR)
    if result.report:
        print(report_table(result.report))
    print(schedule_summary(result))
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
    print(f"wrote {result.output} for target {result.target} (input {result.input_shape}; {stages})")


def register(sub: "argparse._SubParsersAction") -> None:
    """Add ``targets``, ``export-builtin`` and ``compile`` to the CLI."""
    p = sub.add_parser("targets", help="list the bundled device presets (name, host architecture, device)")
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
                        "(N x input shape, or stacked along the batch axis); without it a model trained on built-in "
                        "data is calibrated on 64 of its training inputs, any other's int8 kernels compute the "
                        "scale from each input at run time")
    p.add_argument("--per-call-scales", action="store_true",
                   help="int8 only: compute each layer's activation scale from its input at run time, even for a "
                        "model trained on built-in data (whose training inputs calibrate the scales by default)")
    p.add_argument("--int8-max-error", type=_error_bound, metavar="E",
                   help="int8 with --calibrate: unified layers whose int8 inputs would move the output by more than "
                        "E of its scale on the samples stay fp32, the most sensitive first; the report marks them "
                        "(default 0.015; inf: every unified layer int8)")
    p.add_argument("--gpu-precision", default="fp32", metavar="fp32|fp16|fp16-acc",
                   help="OpenCL targets: fp16 stores activations, weights and block scales as half and sums in "
                        "fp32; fp16-acc also sums in half; both need cl_khr_fp16 on the device (default: fp32)")
    p.add_argument("--dense", action="store_true",
                   help="compile the plain model without unified kernels, for comparison")
    p.add_argument("--emit-source", metavar="DIR",
                   help="also write the generated code into DIR: assembly (.s) and LLVM IR (.ll) for CPU kernels, "
                        "OpenCL C (.cl) for GPU kernels")
    records = p.add_mutually_exclusive_group()
    records.add_argument("--schedules", metavar="DIR",
                         help="tuning records root (DIR/<target>/, as `tvm-unify tune` writes; default: the "
                              "records shipped with tvm-unify)")
    records.add_argument("--no-schedules", action="store_true", help="ignore tuning records: default schedules only")
    p.set_defaults(func=_cmd_compile)
