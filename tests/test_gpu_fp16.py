"""fp16 GPU builds (``compile --gpu-precision fp16|fp16-acc``): the half OpenCL kernels of unified layers
against PyTorch on a real OpenCL device with cl_khr_fp16 (Intel's CPU OpenCL runtime, the ``opencl-fp16``
extra: PoCL's CPU device has no fp16), a whole unified model through the CLI, and the one-line errors
where a target or this machine's devices have no fp16.

Tolerances are error bounds, not guesses, against float64 PyTorch on the same fp16-rounded operands:
with fp32 sums the kernel's only rounding is its output's (at most 2^-11 of sum |w x| per output, half
an fp16 ulp, summed over the kernels that add up to it); with fp16 sums each of the n operations along a
path may round, so |error| <= gamma_n * sum |w x|, gamma_n = n u / (1 - n u), u = 2^-11 (the classical
bound for recursive summation), elementwise.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tvm
from hypothesis import assume, given, settings

from tvm_unify.cli import main
from tvm_unify.compiler import compile_model
from tvm_unify.errors import UserError
from tvm_unify.format import BlockSpec, verify
from tvm_unify.frontend import import_torchscript
from tvm_unify.kernels import KernelOptions, to_ell, to_free_ell
from tvm_unify.kernels.gpu import (PRECISIONS, GpuLimits, GpuPrecision, gpu_conv2d, gpu_dense, gpu_free_dense,
                                   gpu_weight)
from tvm_unify.models import get_builtin
from tvm_unify.runtime import opencl_setup
from tvm_unify.runtime.local import run_local
from tvm_unify.targets import load_target
from tvm_unify.testing import conv_case, conv_cases, conv_reference, project, torch_reference, unified_model
from tvm_unify.torchscript import save_torchscript

OPENCL = load_target("opencl")
LIMITS = GpuLimits.of(OPENCL.tvm_target())
HALF_ULP = 2.0 ** -11  # fp16 unit roundoff
FP16 = [PRECISIONS["fp16"], PRECISIONS["fp16-acc"]]


@pytest.fixture(scope="module")
def dev():
    """An OpenCL device of this machine with cl_khr_fp16; skipped without one (bash scripts/tvu.sh
    installs Intel's CPU OpenCL runtime, the opencl-fp16 extra, which has it)."""
    missing = opencl_setup.missing_packages()
    if missing:
        pytest.skip(f"the OpenCL runtime needs Debian packages {' '.join(missing)}")
    try:
        return opencl_setup.opencl_device(("cl_khr_fp16",))
    except UserError as err:
        pytest.skip(str(err))


def run_half(dev, func: tvm.tirx.PrimFunc, precision: GpuPrecision, x: np.ndarray, arrays, out_shape) -> np.ndarray:
    """Build one kernel for the opencl preset, check it is half OpenCL code, run it on ``dev`` with ``x``
    rounded to the storage dtype; the output as float64."""
    lib = tvm.compile(func, target=OPENCL.tvm_target())
    source = "".join(m.inspect_source("cl") for m in lib.mod.imports if m.kind == "opencl")
    assert "__kernel void" in source and "cl_khr_fp16" in source
    y = tvm.runtime.tensor(np.zeros(out_shape, dtype=precision.storage), dev)
    lib(tvm.runtime.tensor(x.astype(precision.storage), dev),
        *[tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in arrays], y)
    return y.numpy().astype(np.float64)


def assert_within_fp16_bound(ours: np.ndarray, ref: np.ndarray, magnitude: np.ndarray, terms: int,
                             precision: GpuPrecision) -> None:
    """``ours`` against the float64 result ``ref`` of the same fp16-rounded operands, elementwise: output
    rounding (fp32 sums), or ``terms`` roundings along each sum (fp16 sums), of ``magnitude`` = sum |w x|."""
    n = 1 if precision.accumulate == "float32" else terms
    gamma = n * HALF_ULP / (1 - n * HALF_ULP)
    bound = gamma * magnitude + 1e-6 * max(np.abs(ref).max(), 1.0)
    assert (np.abs(ours - ref) <= bound).all(), float(np.abs(ours - ref).max())


def half(a: np.ndarray) -> np.ndarray:
    """``a`` rounded to fp16, in float64: the operand values an fp16 kernel sees."""
    return a.astype(np.float16).astype(np.float64)


@pytest.mark.parametrize("precision", FP16, ids=lambda p: p.name)
@settings(max_examples=4, deadline=None)
@given(case=conv_cases())
def test_fp16_conv2d_matches_pytorch(dev, precision, case):
    g, block, layout, _, _ = case
    assume(min(g.out_hw) > 0)
    w, x, ref32 = conv_case(case)
    ell = to_ell(verify(w, BlockSpec(*block, layout)).encoded)
    ours = run_half(dev, gpu_conv2d(g, ell, layout, KernelOptions(), LIMITS, precision), precision, x,
                    gpu_weight(ell, precision).arrays, ref32.shape)
    ref = conv_reference(g, half(x), half(w))  # unified blocks: rounding w rounds each block's scale
    magnitude = conv_reference(g, np.abs(half(x)), np.abs(half(w)))
    assert_within_fp16_bound(ours, ref, magnitude, g.in_channels * g.kernel[0] * g.kernel[1] + 2, precision)
    assert np.abs(ours - ref32).max() <= 1e-2 * max(np.abs(ref32).max(), 1.0)  # and near the fp32 conv


@pytest.mark.parametrize("precision", FP16, ids=lambda p: p.name)
def test_fp16_dense_and_free_blocks_match_pytorch(dev, precision):
    """A unified linear with free blocks: the unified and the free fp16 kernels add up to the whole weight."""
    rng = np.random.default_rng(7)
    w = project(rng.standard_normal((32, 96)).astype(np.float32), (4, 4), 0.5, unified=0.6)
    enc = verify(w, BlockSpec(4, 4, allow_free=True)).encoded
    ell, free = to_ell(enc), to_free_ell(enc)
    x = rng.standard_normal((3, 96)).astype(np.float32)
    ours = run_half(dev, gpu_dense(3, 96, 32, ell, KernelOptions(), LIMITS, precision), precision, x,
                    gpu_weight(ell, precision).arrays, (3, 32))
    ours += run_half(dev, gpu_free_dense(3, 96, 32, free, LIMITS, precision), precision, x,
                     gpu_weight(free, precision).arrays, (3, 32))
    assert free.count
    assert_within_fp16_bound(ours, half(x) @ half(w).T, np.abs(half(x)) @ np.abs(half(w)).T, 96 + 2, precision)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """digits-cnn, BatchNorm-calibrated, 75% / 4x4 unified, as TorchScript, and its unified layers."""
    path = tmp_path_factory.mktemp("fp16") / "digits.pt"
    model, names = unified_model("digits-cnn")
    save_torchscript(model, path, get_builtin("digits-cnn").input_shape)
    return path, names


@pytest.mark.parametrize("precision", ["fp16", "fp16-acc"])
def test_fp16_model_runs_on_an_fp16_device(dev, tmp_path, digits, capsys, precision):
    """``compile --target opencl --gpu-precision P`` then ``run --device opencl``: every unified layer is
    a half kernel, the output matches PyTorch within fp16 accuracy (a net's rounding compounds over its
    layers: 1% of the largest logit), and fp16 storage is closer than fp16 sums."""
    path, names = digits
    so, x_path, y_path, src = tmp_path / "m.so", tmp_path / "x.npy", tmp_path / "y.npy", tmp_path / "src"
    x = np.random.default_rng(2).standard_normal(get_builtin("digits-cnn").input_shape).astype("float32")
    np.save(x_path, x)
    assert main(["compile", str(path), "--target", "opencl", "--gpu-precision", precision, "-o", str(so),
                 "--emit-source", str(src)]) == 0
    assert f"{len(names)}/5 layers lowered" in capsys.readouterr().out
    source = "".join(p.read_text() for p in src.glob("*.cl"))
    kind = precision.replace("-", "_")
    unified = re.findall(rf"__kernel void unified_conv2d_{kind}_gpu\w*\(([^)]*)\)", source)
    assert len(unified) >= 2 * (len(names) - 1) and all("__global half* restrict x" in a for a in unified)
    assert main(["run", str(so), "--device", "opencl", "--input", str(x_path), "-o", str(y_path)]) == 0
    ref = torch_reference(import_torchscript(path), x)
    error = np.abs(np.load(y_path) - ref).max()
    assert 0 < error <= 1e-2 * np.abs(ref).max(), error


def test_fp16_is_refused_where_there_is_no_fp16(tmp_path, digits):
    """One-line errors: fp16 for a CPU target, for a GPU preset that does not declare cl_khr_fp16, and
    an unknown precision."""
    path = digits[0]
    with pytest.raises(UserError, match=r"^--gpu-precision fp16 is for OpenCL targets .*arm is a CPU target$"):
        compile_model(path, "arm", tmp_path / "m.so", precision="fp16")
    mali = load_target("mali")  # as a user's own preset without the "fp16" field
    (tmp_path / "oldmali.json").write_text(json.dumps({"target": mali.target, "arch": mali.arch,
                                                        "cross_compiler": mali.cross_compiler}))
    with pytest.raises(UserError, match=r"^--gpu-precision fp16-acc needs cl_khr_fp16, which target oldmali does not"):
        compile_model(path, str(tmp_path / "oldmali.json"), tmp_path / "m.so", precision="fp16-acc")
    with pytest.raises(UserError, match=r"^unknown GPU precision 'bf16' \(choose from fp32, fp16, fp16-acc\)$"):
        compile_model(path, "mali", tmp_path / "m.so", precision="bf16")


def _cli_without_fp16_device(*args: str) -> subprocess.CompletedProcess:
    """``tvm-unify ARGS`` in a process whose OpenCL loader sees only the system's drivers (PoCL: no fp16)."""
    env = {**os.environ, "OCL_ICD_VENDORS": str(opencl_setup.SYSTEM_VENDORS)}
    cli = "import sys; from tvm_unify.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", cli, *args], env=env, capture_output=True, text=True, timeout=300)


def test_fp16_library_without_an_fp16_device_is_a_one_line_error(dev, tmp_path, digits):
    """Where no local OpenCL device has cl_khr_fp16, ``compile --target opencl --gpu-precision fp16``
    and ``run --device opencl`` of an fp16 library fail in one line instead of in the device's compiler."""
    if any("cl_khr_fp16" in exts for name, exts in opencl_setup.device_extensions().items() if "pthread" in name):
        pytest.skip("this machine's PoCL has cl_khr_fp16")
    so, x_path = tmp_path / "m.so", tmp_path / "x.npy"
    np.save(x_path, np.zeros(get_builtin("digits-cnn").input_shape, dtype="float32"))
    assert compile_model(digits[0], "opencl", so, precision="fp16").output == str(so)
    for args in (["compile", str(digits[0]), "--target", "opencl", "--gpu-precision", "fp16", "-o",
                  str(tmp_path / "n.so")], ["run", str(so), "--device", "opencl", "--input", str(x_path)]):
        done = _cli_without_fp16_device(*args)
        err = [line for line in done.stderr.splitlines() if "Warning" not in line]
        assert done.returncode == 2 and len(err) == 1 and "cl_khr_fp16" in err[0], done.stderr
    assert not (tmp_path / "n.so").exists()
