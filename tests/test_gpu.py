"""Mobile-GPU builds: the OpenCL kernels of unified layers (``kernels/gpu.py``) against PyTorch on PoCL,
whole unified models built for the ``opencl`` preset run on PoCL through the VM and the CLI, mali/adreno
cross-compiles, every kernel in the OpenCL module, and one-line errors for what has no GPU path."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
from hypothesis import assume, given, settings
from tvm.script import ir as I, relax as R, tirx as T

from tvm_unify.cli import main
from tvm_unify.compiler import compile_model, lower_unified
from tvm_unify.errors import UserError
from tvm_unify.format import BlockSpec, verify
from tvm_unify.frontend import import_torchscript
from tvm_unify.kernels import AddTensor, Affine, Clip, KernelOptions, recipe_of, to_ell, to_free_ell
from tvm_unify.kernels.gpu import (GpuLimits, gpu_conv2d, gpu_dense, gpu_free_conv2d, gpu_free_dense, plan_launch,
                                   regenerate_gpu)
from tvm_unify.kernels.common import dense_problem
from tvm_unify.models import get_builtin
from tvm_unify.pipeline import build, codegen_target, gpu_lowering, schedule_default
from tvm_unify.runtime import opencl_setup
from tvm_unify.runtime.local import library_arch, library_device, run_local
from tvm_unify.targets import android_preset, load_target
from tvm_unify.testing import assert_matches, conv_case, conv_cases, project, torch_reference, unified_model
from tvm_unify.torchscript import save_torchscript

OPENCL = load_target("opencl")
LIMITS = GpuLimits.of(OPENCL.tvm_target())


@pytest.fixture(scope="module")
def dev():
    """This machine's OpenCL device (PoCL), the runtime built and loaded; skipped without the Debian
    packages (bash scripts/tvu.sh installs them)."""
    missing = opencl_setup.missing_packages()
    if missing:
        pytest.skip(f"the OpenCL runtime needs Debian packages {' '.join(missing)}")
    return opencl_setup.opencl_device()  # the runtime built and loaded; PoCL before other drivers


def run_gpu(dev, func: tvm.tirx.PrimFunc, *arrays: np.ndarray, out_shape) -> np.ndarray:
    """Build one kernel for the opencl preset, check it became an OpenCL kernel, run it on PoCL."""
    lib = tvm.compile(func, target=OPENCL.tvm_target())
    assert "__kernel void" in opencl_source(lib.mod)
    y = tvm.runtime.tensor(np.zeros(out_shape, dtype=np.float32), dev)
    lib(*[tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in arrays], y)
    return y.numpy()


def opencl_source(module: tvm.runtime.Module) -> str:
    """The OpenCL C of every module of kind "opencl" under ``module``."""
    own = module.inspect_source("cl") if module.kind == "opencl" else ""
    return own + "".join(opencl_source(sub) for sub in module.imports)


def assert_close(ours: np.ndarray, ref: np.ndarray) -> None:
    assert np.abs(ours - ref).max() <= 1e-5 * max(np.abs(ref).max(), 1.0)


@settings(max_examples=5, deadline=None)
@given(conv_cases())
def test_gpu_conv2d_matches_pytorch(dev, case):
    g, block, layout, _, _ = case
    assume(min(g.out_hw) > 0)
    w, x, ref = conv_case(case)
    ell = to_ell(verify(w, BlockSpec(*block, layout)).encoded)
    assert_close(run_gpu(dev, gpu_conv2d(g, ell, layout, KernelOptions(), LIMITS), x, *ell.arrays,
                         out_shape=ref.shape), ref)


@pytest.mark.parametrize("batch, block, out_blocks, in_blocks", [(1, (4, 4), 6, 9), (3, (2, 8), 5, 4),
                                                                   (1, (8, 1), 3, 40)])
def test_gpu_dense_matches_pytorch(dev, batch, block, out_blocks, in_blocks):
    rng = np.random.default_rng(batch)
    w = project(rng.standard_normal((block[0] * out_blocks, block[1] * in_blocks)).astype(np.float32), block, 0.75)
    x = rng.standard_normal((batch, w.shape[1])).astype(np.float32)
    ell = to_ell(verify(w, BlockSpec(*block)).encoded)
    ours = run_gpu(dev, gpu_dense(batch, w.shape[1], w.shape[0], ell, KernelOptions(), LIMITS), x, *ell.arrays,
                   out_shape=(batch, w.shape[0]))
    assert_close(ours, x @ w.T)


@settings(max_examples=3, deadline=None)
@given(conv_cases())
def test_gpu_free_blocks_match_pytorch(dev, case):
    """Unified + free kernel outputs add up to the conv with the whole weight."""
    g, block, layout, _, _ = case
    assume(min(g.out_hw) > 0)
    w, x, ref = conv_case(case, unified=0.5)
    enc = verify(w, BlockSpec(*block, layout, allow_free=True)).encoded
    ell, free = to_ell(enc), to_free_ell(enc)
    ours = run_gpu(dev, gpu_conv2d(g, ell, layout, KernelOptions(), LIMITS), x, *ell.arrays, out_shape=ref.shape)
    ours += run_gpu(dev, gpu_free_conv2d(g, free, layout, LIMITS), x, *free.arrays, out_shape=ref.shape)
    assert_close(ours, ref)


def test_gpu_free_dense_and_epilogue_match(dev):
    """Unified + free dense kernels add up to the whole weight; the unified kernel regenerated with an
    epilogue applies bias/BN (affine), a residual and ReLU6 at its store, and its recipe keeps the limits."""
    rng = np.random.default_rng(3)
    w = project(rng.standard_normal((32, 48)).astype(np.float32), (4, 4), 0.5, unified=0.6)
    enc = verify(w, BlockSpec(4, 4, allow_free=True)).encoded
    ell, free = to_ell(enc), to_free_ell(enc)
    x = rng.standard_normal((2, 48)).astype(np.float32)
    kernel = gpu_dense(2, 48, 32, ell, KernelOptions(), LIMITS)
    unified = run_gpu(dev, kernel, x, *ell.arrays, out_shape=(2, 32))
    partial = run_gpu(dev, gpu_free_dense(2, 48, 32, free, LIMITS), x, *free.arrays, out_shape=(2, 32))
    assert free.count and np.abs(partial).max() > 0
    assert_close(unified + partial, x @ w.T)
    scale, shift = rng.uniform(0.5, 2, 32).astype(np.float32), rng.standard_normal(32).astype(np.float32)
    residual = rng.standard_normal((2, 32)).astype(np.float32)
    fused = regenerate_gpu(recipe_of(kernel), ell.arrays, (Affine(scale, shift), AddTensor(), Clip(0.0, 6.0)))
    assert recipe_of(fused)["gpu"] == [LIMITS.threads, LIMITS.local_bytes]
    ours = run_gpu(dev, fused, x, *ell.arrays, scale, shift, residual, out_shape=(2, 32))
    np.testing.assert_allclose(ours, np.clip(unified * scale + shift + residual, 0, 6), rtol=1e-5, atol=1e-5)


def test_inputs_too_wide_for_local_memory_are_read_from_global(dev):
    """Where not even one pixel's K inputs fit the local memory, the work-items read global memory."""
    tiny = GpuLimits(64, 256)
    assert not plan_launch(dense_problem(1, 128, 16, in_place=False), 4, tiny).staged
    rng = np.random.default_rng(5)
    w = project(rng.standard_normal((16, 128)).astype(np.float32), (4, 4), 0.75)
    ell = to_ell(verify(w, BlockSpec(4, 4)).encoded)
    x = rng.standard_normal((1, 128)).astype(np.float32)
    func = gpu_dense(1, 128, 16, ell, KernelOptions(), tiny)
    assert 'scope="shared"' not in func.script()
    assert_close(run_gpu(dev, func, x, *ell.arrays, out_shape=(1, 16)), x @ w.T)


@pytest.fixture(scope="module")
def unified_pt(tmp_path_factory):
    """name -> a BatchNorm-calibrated built-in, 75% / 4x4 unified, saved as TorchScript (cached)."""
    root, cache = tmp_path_factory.mktemp("gpu-models"), {}

    def get(name: str):
        if name not in cache:
            model, names = unified_model(name)
            save_torchscript(model, root / f"{name}.pt", get_builtin(name).input_shape)
            cache[name] = root / f"{name}.pt", names
        return cache[name]

    return get


def assert_every_kernel_on_opencl(mod: tvm.IRModule, preset) -> None:
    """Schedule and build as ``pipeline.build`` does; every PrimFunc must be an OpenCL kernel."""
    target = codegen_target(preset)
    scheduled = schedule_default(mod, target)
    ex = tvm.compile(scheduled, target=target, relax_pipeline=gpu_lowering(target))
    kernels = set(re.findall(r"__kernel void (\w+)\(", opencl_source(ex.mod)))
    funcs = [gv.name_hint for gv, f in scheduled.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert any(name.startswith("unified_") for name in funcs)
    missing = [name for name in funcs if not any(k.startswith(f"{name}_kernel") for k in kernels)]
    assert not missing, f"not OpenCL kernels: {missing}"


def check_model_on_pocl(tmp_path, unified_pt, name: str) -> None:
    path, names = unified_pt(name)
    imported = import_torchscript(path)
    so = tmp_path / f"{name}.so"
    result = compile_model(imported, "opencl", so)
    assert {e.layer for e in result.report if e.lowered} == set(names)
    x = np.random.default_rng(1).standard_normal(imported.input_shape).astype("float32")
    assert_matches(run_local(so, x, "opencl"), torch_reference(imported, x))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2"])
def test_unified_builtin_runs_on_pocl(dev, tmp_path, unified_pt, name):
    check_model_on_pocl(tmp_path, unified_pt, name)


def test_cli_compile_opencl_and_run_on_pocl(dev, tmp_path, unified_pt, capsys):
    """``compile --target opencl`` then ``run --device opencl`` matches PyTorch; the library refuses the
    CPU device in one line."""
    path, _ = unified_pt("digits-cnn")
    so, x_path, y_path = tmp_path / "m.so", tmp_path / "x.npy", tmp_path / "y.npy"
    x = np.random.default_rng(2).standard_normal(get_builtin("digits-cnn").input_shape).astype("float32")
    np.save(x_path, x)
    assert main(["compile", str(path), "--target", "opencl", "-o", str(so)]) == 0
    assert "3/5 layers lowered" in capsys.readouterr().out
    assert main(["run", str(so), "--device", "opencl", "--input", str(x_path), "-o", str(y_path)]) == 0
    assert_matches(np.load(y_path), torch_reference(import_torchscript(path), x))
    assert main(["run", str(so), "--input", str(x_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "run it with --device opencl" in err, err


def test_every_kernel_lands_in_the_opencl_module(unified_pt):
    """On the Adreno preset (whose build skips TVM's Adreno legalization and scheduling, see
    ``pipeline.gpu_lowering``) every kernel of a unified model is an OpenCL kernel."""
    imported = import_torchscript(unified_pt("digits-cnn")[0])
    preset = load_target("adreno")
    mod, _ = lower_unified(imported, target=codegen_target(preset))
    assert_every_kernel_on_opencl(mod, preset)


@pytest.mark.parametrize("target", ["mali", pytest.param("adreno", marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", ["digits-cnn", pytest.param("resnet18", marks=pytest.mark.slow),
                                  pytest.param("mobilenetv2", marks=pytest.mark.slow)])
def test_mobile_gpu_cross_compiles(tmp_path, unified_pt, target, name):
    path, names = unified_pt(name)
    so = tmp_path / f"{name}-{target}.so"
    result = compile_model(path, target, so, emit_source=tmp_path / "src")
    assert {e.layer for e in result.report if e.lowered} == set(names) and library_arch(so) == "aarch64"
    source = "".join(p.read_text() for p in (tmp_path / "src").glob("*.cl"))
    assert re.search(r"__kernel void unified_conv2d_gpu\w*_kernel", source)
    assert library_device(so) == "opencl"  # an RPC device runs it on its GPU, not its CPU
    compile_model(path, "arm", tmp_path / "cpu.so")
    assert library_device(tmp_path / "cpu.so") == "cpu"


def test_int8_is_refused_for_opencl(unified_pt, tmp_path):
    with pytest.raises(UserError, match=r"^int8 unified kernels run on CPUs only: build for opencl with --mode fp32$"):
        compile_model(unified_pt("digits-cnn")[0], "mali", tmp_path / "m.so", mode="int8")


@I.ir_module
class _CpuKernel:
    """A kernel marked scheduled that binds no GPU thread (as a CPU-lowered unified kernel is)."""

    @T.prim_func
    def cpu_kernel(x: T.Buffer((8,), "float32"), y: T.Buffer((8,), "float32")):
        T.func_attr({"tirx.is_scheduled": True})
        for i in range(8):
            y[i] = x[i] * T.float32(2)

    @R.function
    def main(x: R.Tensor((8,), "float32")) -> R.Tensor((8,), "float32"):
        cls = _CpuKernel
        with R.dataflow():
            y = R.call_tir(cls.cpu_kernel, (x,), out_ty=R.Tensor((8,), "float32"))
            R.output(y)
        return y


def test_kernel_without_gpu_threads_is_a_one_line_error():
    with pytest.raises(UserError, match=r"^no GPU schedule for cpu_kernel on opencl: [^\n]*host code$"):
        build(_CpuKernel, load_target("mali"))


def test_gpu_presets():
    presets = {name: load_target(name) for name in ("mali", "adreno", "opencl")}
    assert {p.device for p in presets.values()} == {"opencl"} and load_target("arm").device == "cpu"
    assert presets["opencl"].is_host and not presets["mali"].is_host and not presets["adreno"].is_host
    assert "adreno" in presets["adreno"].tvm_target().keys and "texture" not in presets["adreno"].tvm_target().keys
    for preset in presets.values():
        limits = GpuLimits.of(preset.tvm_target())
        assert limits.threads >= 64 and limits.local_bytes >= 16384
    assert codegen_target(presets["opencl"]).kind.name == "opencl"


def test_android_ndk_puts_the_triple_on_the_gpu_host(tmp_path):
    clang = tmp_path / "toolchains/llvm/prebuilt/linux-x86_64/bin/aarch64-linux-android30-clang"
    clang.parent.mkdir(parents=True)
    clang.touch()
    android = android_preset(load_target("mali"), tmp_path)
    assert android.target["host"]["mtriple"] == "aarch64-linux-android" and "mtriple" not in android.target
    assert android.tvm_target().host.attrs["mtriple"] == "aarch64-linux-android"


def test_targets_lists_the_gpu_presets(capsys):
    assert main(["targets"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines()}
    assert {"mali", "adreno", "opencl"} <= listed
