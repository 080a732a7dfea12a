"""TVM's OpenCL runtime built as a sidecar for the pinned wheel (tvm_unify.runtime.opencl_setup), run on
PoCL, a CPU OpenCL device: kernels scheduled with dlight's GPU rules must land in the OpenCL module and
match numpy / PyTorch, including modules serialised by the wheel's own compiler."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import tvm
import tvm.s_tir.dlight as dl
import tvm_ffi
from tvm import relax
from tvm.relax.frontend.torch import from_exported_program
from tvm.script import relax as R

from tvm_unify.errors import UserError
from tvm_unify.runtime import opencl_setup

TARGET = {"kind": "opencl", "host": {"kind": "llvm"}}


@pytest.fixture(scope="module")
def dev():
    """The OpenCL device, after building (once, cached) and loading the runtime; skipped when the Debian
    packages are absent (bash scripts/tvu.sh installs them), while a failing build fails."""
    missing = opencl_setup.missing_packages()
    if missing:
        pytest.skip(f"the OpenCL runtime needs Debian packages {' '.join(missing)}")
    return opencl_setup.opencl_device()  # the runtime built and loaded; PoCL before other drivers


def _schedule(mod: tvm.IRModule) -> tvm.IRModule:
    """Legalize, fuse and schedule with dlight's GPU rules: what a mobile-GPU build of ours does."""
    seq = tvm.ir.transform.Sequential([relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                                       relax.transform.FuseOps(), relax.transform.FuseTIR()])
    with tvm.target.Target(TARGET):
        return dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                       dl.gpu.Fallback())(seq(mod))


def _opencl_source(module) -> str:
    """The OpenCL C of the first module of kind "opencl" among the imports (the VM nests it under llvm)."""
    if module.kind == "opencl":
        return module.inspect_source("cl")
    return next((src for sub in module.imports if (src := _opencl_source(sub))), "")


def _assert_every_kernel_on_opencl(scheduled: tvm.IRModule, ex) -> None:
    """Each PrimFunc must have become an OpenCL kernel: an unscheduled one silently turns into host code."""
    kernels = set(re.findall(r"__kernel void (\w+)\([^;{]*\{", _opencl_source(ex.mod)))
    funcs = [gv.name_hint for gv, f in scheduled.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert funcs
    on_host = [name for name in funcs if not any(k.startswith(f"{name}_kernel") for k in kernels)]
    assert not on_host, f"compiled as host code, not OpenCL: {on_host}; kernels: {sorted(kernels)}"


def _compile(mod: tvm.IRModule):
    scheduled = _schedule(mod)
    ex = tvm.compile(scheduled, target=tvm.target.Target(TARGET))
    _assert_every_kernel_on_opencl(scheduled, ex)
    return ex


def _run(ex_or_lib, dev, *arrays: np.ndarray) -> list[np.ndarray]:
    out = relax.VirtualMachine(ex_or_lib, dev)["main"](*(tvm.runtime.tensor(a, dev) for a in arrays))
    return [t.numpy() for t in out] if isinstance(out, tvm_ffi.Array) else [out.numpy()]


def _mlp_module() -> tvm.IRModule:
    """matmul + relu (dlight Matmul, Fallback) and a row sum (Reduction)."""

    @R.function
    def main(x: R.Tensor((64, 128), "float32"), w: R.Tensor((128, 96), "float32")):
        with R.dataflow():
            y = R.nn.relu(R.matmul(x, w))
            s = R.sum(y, axis=1)
            R.output(y, s)
        return (y, s)

    return tvm.IRModule({"main": main})


class _SmallCnn(torch.nn.Module):
    """conv2d (two, one strided) + bias + relu, global mean, linear: the ops of our CIFAR-size models."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def cnn(dev):
    """The CNN's imported Relax module, an input, PyTorch's output and our OpenCL executable for it."""
    torch.manual_seed(0)
    net = _SmallCnn().eval()
    x = torch.randn(1, 3, 16, 16)
    mod = from_exported_program(torch.export.export(net, (x,)), keep_params_as_input=False,
                                unwrap_unit_return_tuple=True)
    with torch.no_grad():
        ref = net(x).numpy()
    return mod, x.numpy(), ref, _compile(mod)


def test_missing_packages_named_for_apt(monkeypatch, tmp_path):
    """Without g++ or a registered driver the set-up names the Debian packages, in one line."""
    monkeypatch.setattr(opencl_setup.shutil, "which", lambda _name: None)
    monkeypatch.setenv("OCL_ICD_VENDORS", str(tmp_path))
    assert opencl_setup.missing_packages() == ["g++", "pocl-opencl-icd"]
    with pytest.raises(UserError, match=r"^[^\n]*apt-get install g\+\+ pocl-opencl-icd[^\n]*$"):
        opencl_setup._require_toolchain()


def test_matmul_relu_sum_runs_on_opencl(dev):
    """The quick end-to-end proof: dlight-scheduled kernels compiled and run by the sidecar on PoCL."""
    assert dev.exist and opencl_setup.opencl_available()
    messages: list[str] = []
    library = opencl_setup.ensure_opencl_runtime(log=messages.append)
    assert not messages and library.is_file()  # cached and already loaded: nothing built
    assert tvm_ffi.get_global_func("ffi.Module.create.opencl", allow_missing=True) is not None

    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 128), dtype="float32")
    w = rng.standard_normal((128, 96), dtype="float32")
    y, s = _run(_compile(_mlp_module()), dev, x, w)
    ref = np.maximum(x @ w, 0)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(s, ref.sum(axis=1), rtol=1e-4, atol=1e-3)


@pytest.mark.slow
def test_conv_net_matches_pytorch(dev, cnn):
    """A PyTorch CNN imported with from_exported_program runs on OpenCL and matches PyTorch."""
    _, x, ref, ex = cnn
    (out,) = _run(ex, dev, x)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_exported_library_reloads_and_times(dev, cnn, tmp_path):
    """export_library + load_module go through the sidecar's save/load of the OpenCL module; the VM's
    timer uses its OpenCL timer."""
    _, x, ref, ex = cnn
    ex.export_library(str(tmp_path / "cnn.so"))
    lib = tvm.runtime.load_module(str(tmp_path / "cnn.so"))
    (out,) = _run(lib, dev, x)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    timer = relax.VirtualMachine(lib, dev).time_evaluator("main", dev, number=2, repeat=1)
    assert timer(tvm.runtime.tensor(x, dev)).mean > 0


@pytest.mark.slow
def test_wheel_compiler_bytes_load_in_sidecar(dev, cnn, tmp_path, monkeypatch):
    """ABI check of the serialised format: the wheel's compiler, forced to its own placeholder OpenCL
    module (TVM_COMPILE_FORCE_FALLBACK), writes bytes that the vendored loader must read back and run."""
    mod, x, ref, _ = cnn
    monkeypatch.setenv("TVM_COMPILE_FORCE_FALLBACK", "1")
    ex = tvm.compile(_schedule(mod), target=tvm.target.Target(TARGET))
    monkeypatch.delenv("TVM_COMPILE_FORCE_FALLBACK")
    with pytest.raises(Exception, match="OpenCL runtime is not linked"):
        _run(ex, dev, x)  # the placeholder only serialises
    ex.export_library(str(tmp_path / "fallback.so"))
    (out,) = _run(tvm.runtime.load_module(str(tmp_path / "fallback.so")), dev, x)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_fp32_libraries_run_on_pocl(dev):
    """With Intel's fp16 driver registered too (the opencl-fp16 extra), libraries that need no extension
    still get PoCL's device, the one this project verifies its OpenCL builds on."""
    assert dev.device_name.startswith("pthread"), dev.device_name
