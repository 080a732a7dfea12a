"""Default CPU schedules: each rule matches PyTorch on random shapes and is the rule that ran.

Single layers with random weights are fine here (no depth for activations to collapse through);
whole models are checked on BatchNorm-calibrated nets in test_compile_builtin.py.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import tvm
import tvm_ffi
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tvm import relax

from tvm_unify.testing import assert_matches
from tvm_unify.pipeline import codegen_target
from tvm_unify.pipeline import schedule_default
from tvm_unify.schedule import RULE_ATTR
from tvm_unify.passes import FoldConstantsNumpy
from tvm_unify.targets import load_target

HOST = codegen_target(load_target("host"))
FEW = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def relax_module(build_body, shape: tuple[int, ...]) -> tvm.IRModule:
    """A one-input Relax module whose body ``build_body(bb, x)`` emits the layer."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(build_body(bb, x))
        bb.emit_func_output(out)
    return bb.get()


def run_scheduled(mod: tvm.IRModule, x: np.ndarray, target: tvm.target.Target = HOST) -> tuple[np.ndarray, set[str]]:
    """Schedule and build ``mod`` for the host, run it on ``x``; also return the rules that ran."""
    scheduled = schedule_default(mod, target)
    rules = {str(f.attrs[RULE_ATTR]) for _, f in scheduled.functions_items()
             if isinstance(f, tvm.tirx.PrimFunc) and RULE_ATTR in f.attrs}
    with target:
        vm = relax.VirtualMachine(tvm.compile(scheduled, target=target), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy(), rules


def const(array: torch.Tensor) -> relax.Expr:
    return relax.const(array.numpy())


def conv_bn_relu(x_shape, out_channels, kernel, stride, groups, seed):
    """A conv2d + per-channel affine (inference batch norm) + ReLU layer: Relax module and torch reference."""
    gen = torch.Generator().manual_seed(seed)
    channels = x_shape[1]
    weight = torch.randn((out_channels, channels // groups, kernel, kernel), generator=gen)
    scale, shift = torch.rand(out_channels, generator=gen) + 0.5, torch.randn(out_channels, generator=gen)
    pad = kernel // 2

    def body(bb, x):
        y = bb.emit(relax.op.nn.conv2d(x, const(weight), strides=stride, padding=pad, groups=groups))
        y = bb.emit(relax.op.add(relax.op.multiply(y, const(scale.reshape(1, -1, 1, 1))),
                                 const(shift.reshape(1, -1, 1, 1))))
        return relax.op.nn.relu(y)

    def reference(x: np.ndarray) -> np.ndarray:
        y = torch.nn.functional.conv2d(torch.from_numpy(x), weight, stride=stride, padding=pad, groups=groups)
        return torch.relu(y * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)).numpy()

    return relax_module(body, x_shape), reference


def check_layer(mod, reference, shape, expected_rule: str | None, seed=0):
    """Numerics against PyTorch, and (unless None) the rule that must have scheduled the layer."""
    x = np.random.default_rng(seed).standard_normal(shape).astype("float32")
    ours, rules = run_scheduled(mod, x)
    assert_matches(ours, reference(x))
    assert expected_rule is None or expected_rule in rules, f"{expected_rule} did not run (rules: {rules})"


@FEW
@given(channels=st.sampled_from([3, 8, 16, 24]), out_channels=st.sampled_from([8, 10, 32, 48]),
       size=st.integers(3, 19), kernel=st.sampled_from([1, 3, 5]), stride=st.sampled_from([1, 2]),
       seed=st.integers(0, 1000))
def test_conv2d_matches_pytorch(channels, out_channels, size, kernel, stride, seed):
    shape = (1, channels, size, size + 2)
    mod, reference = conv_bn_relu(shape, out_channels, kernel, stride, 1, seed)
    check_layer(mod, reference, shape, "Contraction", seed)


@FEW
@given(groups=st.sampled_from([2, 4]), per_group=st.sampled_from([3, 8, 12]), size=st.integers(4, 12),
       stride=st.sampled_from([1, 2]), seed=st.integers(0, 1000))
def test_grouped_conv2d_matches_pytorch(groups, per_group, size, stride, seed):
    shape = (1, groups * per_group, size, size)
    mod, reference = conv_bn_relu(shape, groups * per_group, 3, stride, groups, seed)
    check_layer(mod, reference, shape, "Contraction", seed)


@FEW
@given(channels=st.sampled_from([8, 16, 96, 144]), size=st.integers(2, 33), kernel=st.sampled_from([3, 5]),
       stride=st.sampled_from([1, 2]), seed=st.integers(0, 1000))
def test_depthwise_conv2d_matches_pytorch(channels, size, kernel, stride, seed):
    shape = (1, channels, size, size)
    mod, reference = conv_bn_relu(shape, channels, kernel, stride, channels, seed)
    out_width = (size + 2 * (kernel // 2) - kernel) // stride + 1
    # Contraction vectorizes a depthwise conv along its output width; a one-pixel output has no such
    # axis (channels are not contiguous in NCHW) and goes to the next rule.
    check_layer(mod, reference, shape, "Contraction" if out_width > 1 else None, seed)


@FEW
@given(rows=st.sampled_from([1, 3, 16]), features=st.integers(2, 300), outputs=st.integers(2, 130),
       seed=st.integers(0, 1000))
def test_linear_matches_pytorch(rows, features, outputs, seed):
    """The importer's Linear: matmul with a transposed constant weight, plus bias.

    Output counts without a divisor up to two vectors (primes) cannot tile without a tail and go
    to another rule; they must still match.
    """
    gen = torch.Generator().manual_seed(seed)
    weight, bias = torch.randn((outputs, features), generator=gen), torch.randn(outputs, generator=gen)
    mod = relax_module(lambda bb, x: relax.op.add(
        relax.op.matmul(x, relax.op.permute_dims(const(weight))), const(bias)), (rows, features))
    check_layer(mod, lambda x: torch.nn.functional.linear(torch.from_numpy(x), weight, bias).numpy(),
                (rows, features), "Contraction" if any(outputs % d == 0 for d in range(2, 33)) else None, seed)


@FEW
@given(channels=st.sampled_from([4, 16, 64]), size=st.integers(4, 20), kernel=st.sampled_from([2, 3]),
       stride=st.sampled_from([1, 2]), seed=st.integers(0, 1000))
def test_max_pool_matches_pytorch(channels, size, kernel, stride, seed):
    shape = (1, channels, size, size)
    mod = relax_module(lambda bb, x: relax.op.nn.max_pool2d(x, kernel, stride, padding=kernel // 2), shape)
    check_layer(mod, lambda x: torch.nn.functional.max_pool2d(
        torch.from_numpy(x), kernel, stride, padding=kernel // 2).numpy(), shape, "Contraction", seed)


@pytest.mark.parametrize("channels, size", [(64, 4), (1280, 7), (10, 1)])
def test_global_average_pool_matches_pytorch(channels, size):
    shape = (1, channels, size, size)
    mod = relax_module(lambda bb, x: relax.op.mean(x, axis=[2, 3], keepdims=True), shape)
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    ours, rules = run_scheduled(mod, x)
    assert_matches(ours, x.mean(axis=(2, 3), keepdims=True))
    assert rules, "the pooling function was left unscheduled"


def test_injective_ops_use_the_fallback():
    """Concat + channel shuffle (reshape/transpose) + sigmoid: no reduction, handled by Fallback."""
    shape = (1, 8, 6, 6)

    def body(bb, x):
        cat = bb.emit(relax.op.concat([x, relax.op.sigmoid(x)], axis=1))
        split = bb.emit(relax.op.reshape(cat, (1, 2, 8, 6, 6)))
        return relax.op.reshape(relax.op.permute_dims(split, [0, 2, 1, 3, 4]), (1, 16, 6, 6))

    def reference(x):
        t = torch.from_numpy(x)
        cat = torch.cat([t, torch.sigmoid(t)], 1)
        return cat.view(1, 2, 8, 6, 6).transpose(1, 2).reshape(1, 16, 6, 6).numpy()

    check_layer(relax_module(body, shape), reference, shape, "Fallback")


def test_scheduled_functions_are_left_alone():
    """A PrimFunc marked tirx.is_scheduled (a unified kernel) keeps its exact body."""
    mod, _ = conv_bn_relu((1, 8, 6, 6), 16, 3, 1, 1, seed=0)
    with HOST:
        legal = relax.transform.LegalizeOps()(mod)
    gvar = next(g for g, f in legal.functions_items() if isinstance(f, tvm.tirx.PrimFunc)
                and "conv2d" in g.name_hint)
    marked = legal[gvar].with_attr("tirx.is_scheduled", True)
    legal[gvar] = marked
    out = schedule_default(legal, HOST)
    assert RULE_ATTR not in out[gvar].attrs
    assert tvm_ffi.structural_equal(out[gvar].body, marked.body), "a scheduled kernel was changed or fused"


def test_aarch64_conv_uses_neon_fma():
    """For an aarch64 target the conv kernel vectorizes to 4-lane NEON fused multiply-adds."""
    mod, _ = conv_bn_relu((1, 16, 8, 8), 32, 3, 1, 1, seed=0)
    target = load_target("arm").tvm_target()
    with target:
        library = tvm.compile(schedule_default(mod, target), target=target).mod
    asm = "".join(lib.inspect_source("asm") for lib in library.imports)
    assert re.search(r"fmla\s+v\d+\.4s", asm), "no 4-lane NEON fma in the conv kernel"


def test_squeeze_excitation_broadcast_epilogue_matches_pytorch():
    """A 1x1 conv on pooled features whose sigmoid gates a larger tensor: the epilogue runs unfused."""
    gen = torch.Generator().manual_seed(3)
    shape, weight = (1, 32, 8, 8), torch.randn((32, 32, 1, 1), generator=gen)

    def body(bb, x):
        pooled = bb.emit(relax.op.mean(x, axis=[2, 3], keepdims=True))
        gate = bb.emit(relax.op.sigmoid(relax.op.nn.conv2d(pooled, const(weight))))
        return relax.op.multiply(x, gate)

    def reference(x):
        t = torch.from_numpy(x)
        return (t * torch.sigmoid(torch.nn.functional.conv2d(t.mean((2, 3), keepdim=True), weight))).numpy()

    check_layer(relax_module(body, shape), reference, shape, "Contraction")


def test_weight_preparation_folds_in_numpy():
    """HWIO kernels and batch-norm constants are folded before legalization, to the exact values."""
    gen = torch.Generator().manual_seed(4)
    weight, var = torch.randn((8, 4, 3, 3), generator=gen), torch.rand(8, generator=gen) + 0.1

    def body(bb, x):
        kernel = bb.emit(relax.op.permute_dims(const(weight), [2, 3, 1, 0]))
        std = bb.emit(relax.op.sqrt(relax.op.add(relax.op.expand_dims(const(var), [0, 2, 3]), relax.const(1e-5))))
        return relax.op.divide(relax.op.nn.conv2d(x, kernel, kernel_layout="HWIO"), std)

    folded = FoldConstantsNumpy()(relax_module(body, (1, 4, 6, 6)))
    ops, consts = set(), []

    def visit(expr):
        if isinstance(expr, relax.Call):
            ops.add(expr.op.name)
        elif isinstance(expr, tvm.ir.GenericConst):
            consts.append(expr.value.numpy())

    relax.analysis.post_order_visit(folded["main"], visit)
    assert ops == {"relax.nn.conv2d", "relax.divide"}
    assert any(c.shape == (3, 3, 4, 8) and np.array_equal(c, weight.numpy().transpose(2, 3, 1, 0)) for c in consts)
    assert any(c.shape == (1, 8, 1, 1) and np.allclose(c.ravel(), np.sqrt(var.numpy() + 1e-5)) for c in consts)


def test_host_codegen_targets_this_cpu():
    """Host builds use this machine's CPU (vector width, FMA); cross presets stay as written."""
    assert str(HOST.attrs["mcpu"]) == tvm.target.codegen.llvm_get_system_cpu()
    arm = load_target("arm")
    assert codegen_target(arm).attrs.get("mcpu") is None
