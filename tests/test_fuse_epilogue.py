"""FuseUnifiedEpilogue: bias, BatchNorm, residual adds, ReLU and ReLU6 after a unified kernel run in its
store, the result still matches PyTorch (fp32, and int8 against the fake-quantized reference), and the
epilogue ops are gone from the compiled module; chains stop where they must."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import relax

from tvm_unify.testing import assert_matches, torch_reference
from tvm_unify.testing import fake_quant_reference, int8_rtol
from tvm_unify.models.calibration import calibrate_batchnorm
from tvm_unify.compiler import lower_unified
from tvm_unify.pipeline import codegen_target
from tvm_unify.frontend import import_torchscript
from tvm_unify.kernels import recipe_of
from tvm_unify.kernels.unified import is_deferred
from tvm_unify.passes import FuseUnifiedEpilogue
from tvm_unify.pipeline import schedule_default
from tvm_unify.targets import load_target
from tvm_unify.torchscript import save_torchscript
from tvm_unify.testing import unify_model

CALL_TIR = tvm.ir.Op.get("relax.call_tir")


def batch_norm(channels: int, gamma: tuple[float, float] = (0.5, 1.5)) -> nn.BatchNorm2d:
    """A BatchNorm with trained-like (non-trivial) affine parameters; its statistics are calibrated later."""
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.uniform_(*gamma)
        bn.bias.normal_(0.0, 0.2)
    return bn


class BasicBlock(nn.Module):
    """ResNet's basic block: conv-BN-ReLU, conv-BN, + input, ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False), batch_norm(channels)
        self.conv2, self.bn2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False), batch_norm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + x)


class UsedTwice(nn.Module):
    """conv-BN whose output feeds two ops: only the BN may fuse."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(16, 32, 3, padding=1, bias=False), batch_norm(32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return torch.relu(y) * y


class PerPixelBias(nn.Module):
    """conv + a constant that varies across pixels: not an epilogue the kernel can apply per channel."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(16, 32, 1)
        self.register_buffer("offset", torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x) + self.offset)


class ScalarOps(nn.Module):
    """Scalar constants on either side (``c - y`` folds as scale -1, shift c) after a biased conv. They
    are float32 tensors: the importer turns Python float scalars into float64 ops, which end a chain."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(16, 32, 3, padding=1)
        self.register_buffer("divisor", torch.tensor(0.5))
        self.register_buffer("offset", torch.tensor(0.25))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.offset - self.conv(x) / self.divisor)


def relu6_block() -> nn.Module:
    """conv-BN-ReLU6 with BN scales large enough that some outputs clip at 6."""
    return nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), batch_norm(32, gamma=(2.0, 6.0)), nn.ReLU6())


# name -> (module factory, input shape, has BatchNorm, epilogue per unified kernel call, other kernels left)
CASES = {
    "conv-bias-bn-relu": (lambda: nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), batch_norm(32), nn.ReLU()),
                          (1, 16, 8, 8), True, [("affine", "relu")], 0),
    "basic-block": (lambda: BasicBlock(16), (1, 16, 8, 8), True, [("affine", "relu"), ("affine", "add", "relu")], 0),
    "conv-bn-relu6": (relu6_block, (1, 16, 8, 8), True, [("affine", "clip(0.0,6.0)")], 0),
    "linear-bias-relu": (lambda: nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32), nn.ReLU()),
                         (4, 64), False, [("shift", "relu"), ("shift", "relu")], 0),
    "linear-gemv": (lambda: nn.Sequential(nn.Linear(64, 128), nn.ReLU()), (1, 64), False, [("shift", "relu")], 0),
    "scalar-ops": (ScalarOps, (1, 16, 8, 8), False, [("affine", "relu")], 0),
    "used-twice": (UsedTwice, (1, 16, 8, 8), True, [("affine",)], 1),
    "per-pixel-bias": (PerPixelBias, (1, 16, 8, 8), False, [("shift",)], 1),
}


def unified(factory, input_shape: tuple[int, ...], has_bn: bool, tmp_path):
    """The module with its unified layers (4x4 blocks, sparsity 0.75) and BN fitted to them, imported."""
    torch.manual_seed(0)
    model = factory().eval()
    names = unify_model(model, (4, 4), 0.75)
    assert names, "the test module has no unifiable layer"
    if has_bn:
        calibrate_batchnorm(model, input_shape)
    path = tmp_path / "model.pt"
    save_torchscript(model, path, input_shape)
    return model, names, import_torchscript(path)


def compile_scheduled(mod: tvm.IRModule, fuse: bool = True) -> tuple[tvm.IRModule, relax.VirtualMachine]:
    """What ``compiler.build`` does, keeping the scheduled module to inspect."""
    target = codegen_target(load_target("host"))
    with target:
        scheduled = schedule_default(mod, target, fuse)
        return scheduled, relax.VirtualMachine(tvm.compile(scheduled, target=target), tvm.cpu())


def kernel_calls(mod: tvm.IRModule) -> tuple[list[tuple[str, ...]], int]:
    """The fused epilogue of each unified kernel call in ``main``, in order, and how many other kernels
    (legalized and fused Relax ops) ``main`` still calls."""
    unified, others = [], 0
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            if isinstance(binding.value, relax.Call) and binding.value.op == CALL_TIR:
                recipe = recipe_of(mod[binding.value.args[0]])
                if recipe is None:
                    others += 1
                else:
                    unified.append(tuple(recipe["epilogue"]))
    return unified, others


def run(vm: relax.VirtualMachine, x: np.ndarray) -> np.ndarray:
    return vm["main"](tvm.runtime.tensor(x)).numpy()


@pytest.mark.parametrize("mode", ["fp32", "int8"])
@pytest.mark.parametrize("case", list(CASES))
def test_epilogue_is_fused_and_matches_pytorch(tmp_path, case, mode):
    factory, shape, has_bn, epilogues, others = CASES[case]
    model, names, imported = unified(factory, shape, has_bn, tmp_path)
    mod, report = lower_unified(imported, mode)
    assert {e.layer for e in report if e.lowered} == set(names)
    scheduled, vm = compile_scheduled(mod)
    assert kernel_calls(scheduled) == (epilogues, others)
    x = np.random.default_rng(1).standard_normal(shape).astype("float32")
    ours = run(vm, x)
    if mode == "fp32":
        assert_matches(ours, torch_reference(imported, x), rtol=1e-4)
    else:
        rtol = int8_rtol(model, names, x)
        assert_matches(ours, fake_quant_reference(model, names, x), rtol=rtol)
    if case == "conv-bn-relu6":
        assert (ours == 6).any() and (ours == 0).any(), "both ReLU6 bounds are exercised"


def test_fusion_removes_the_epilogue_kernels(tmp_path):
    """Against the same build without the pass: same output, one kernel call per unified layer."""
    _, _, imported = unified(lambda: BasicBlock(16), (1, 16, 8, 8), True, tmp_path)
    mod, _ = lower_unified(imported)
    fused, fused_vm = compile_scheduled(mod)
    plain, plain_vm = compile_scheduled(mod, fuse=False)
    assert kernel_calls(fused) == ([("affine", "relu"), ("affine", "add", "relu")], 0)
    assert kernel_calls(plain) == ([(), ()], 2)
    x = np.random.default_rng(2).standard_normal((1, 16, 8, 8)).astype("float32")
    assert_matches(run(fused_vm, x), run(plain_vm, x), rtol=1e-5)


def test_residual_add_of_two_kernels_fuses_into_one(tmp_path):
    """A downsampling block adds two unified branches: the first claims the add, the second keeps its BN."""

    class Downsample(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.main = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1, bias=False), batch_norm(32))
            self.skip = nn.Sequential(nn.Conv2d(16, 32, 1, 2, bias=False), batch_norm(32))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.main(x) + self.skip(x))

    _, _, imported = unified(Downsample, (1, 16, 8, 8), True, tmp_path)
    mod, _ = lower_unified(imported)
    scheduled, vm = compile_scheduled(mod)
    assert kernel_calls(scheduled) == ([("affine",), ("affine", "add", "relu")], 0)
    x = np.random.default_rng(3).standard_normal((1, 16, 8, 8)).astype("float32")
    assert_matches(run(vm, x), torch_reference(imported, x), rtol=1e-4)


def test_dense_module_is_left_alone(builtin_pt):
    mod = import_torchscript(builtin_pt("digits-cnn")).mod
    fusion = FuseUnifiedEpilogue()
    tvm.ir.assert_structural_equal(fusion(mod), mod)
    assert fusion.fused == []


@pytest.mark.parametrize("mode", ["fp32", "int8"])
def test_deferred_kernels_are_generated_once_by_the_build(tmp_path, mode):
    """``lower_unified(defer=True)`` (what compile does) leaves signatures with the kernels' parameters and
    recipes; the build generates them, fused with their epilogue or (fusion off) as they are, and computes
    what the eagerly generated kernels compute."""
    _, _, imported = unified(UsedTwice, (1, 16, 8, 8), True, tmp_path)
    layers = []
    eager, _ = lower_unified(imported, mode, choose=lambda layer: layers.append(layer) or layer.options)
    deferred, _ = lower_unified(imported, mode, defer=True)
    for layer in layers:
        kernel, signature = layer.kernel(layer.options)[0], layer.signature(layer.options)[0]
        assert is_deferred(signature) and not is_deferred(kernel)
        assert [(list(p.shape), p.dtype) for p in signature.params] == [(list(p.shape), p.dtype) for p in kernel.params]
        assert recipe_of(signature) == recipe_of(kernel)
    x = np.random.default_rng(4).standard_normal((1, 16, 8, 8)).astype("float32")
    expected = run(compile_scheduled(eager)[1], x)
    for fuse in (True, False):
        scheduled, vm = compile_scheduled(deferred, fuse)
        assert not any(is_deferred(f) for f in scheduled.functions.values())
        assert_matches(run(vm, x), expected, rtol=1e-6)
