"""The planar conv kernel (``kernels/planar.py``: depthwise convs, convs with few input channels) against
PyTorch over random shapes, groups, strides, paddings and knobs (lanes, rows per step), with and without
an epilogue; the untuned knobs; the pass that lowers such layers (``LowerPlanarConv2d``) in a compiled
model, with BatchNorm and ReLU6 fused into its store; convs it must leave alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from tvm import relax

from tvm_unify.kernels import Affine, Clip
from tvm_unify.kernels.common import Conv2dGeometry
from tvm_unify.kernels.planar import (MAX_ACCUMULATOR_LANES, MAX_SHARED_PLANES, MIN_OUTPUT_WIDTH, PlanarConv,
                                      planar_conv2d, row_vector, supports)
from tvm_unify.kernels.recipe import recipe_of
from tvm_unify.models.calibration import calibrate_batchnorm
from tvm_unify.passes import LowerPlanarConv2d
from tvm_unify.pipeline import codegen_target, schedule_default
from tvm_unify.targets import load_target
from tvm_unify.testing import assert_matches, conv_reference, import_model

CALL_TIR = tvm.ir.Op.get("relax.call_tir")


@st.composite
def planar_cases(draw):
    """(geometry, groups, seed): depthwise or up to four input channels (groups=1), batch 1 or 2, plane
    sizes from narrow to wider than two vectors, 3x3 and 5x5 taps, strides 1 and 2 (also mixed),
    symmetric and asymmetric paddings."""
    k = draw(st.sampled_from([3, 5]))
    depthwise = draw(st.booleans())
    c_in = draw(st.integers(1, 6 if depthwise else MAX_SHARED_PLANES))
    g = Conv2dGeometry(batch=draw(st.sampled_from([1, 1, 2])), in_channels=c_in, height=draw(st.integers(k, 20)),
                       width=draw(st.integers(k + 2 * MIN_OUTPUT_WIDTH, 70)),
                       out_channels=c_in if depthwise else draw(st.integers(1, 5)), kernel=(k, k),
                       stride=draw(st.sampled_from([(1, 1), (2, 2), (1, 2)])),
                       padding=draw(st.sampled_from([(0, 0, 0, 0), (1, 1, 1, 1), (k // 2,) * 4, (0, 1, 1, 0)])))
    return g, c_in if depthwise else 1, draw(st.integers(0, 999))


def run_planar(g: Conv2dGeometry, groups: int, x: np.ndarray, w: np.ndarray, lanes: int, epilogue=(),
               rows: int = 1) -> np.ndarray:
    lib = tvm.compile(planar_conv2d(g, groups, lanes, epilogue, rows), target=tvm.target.Target({"kind": "llvm"}))
    operands = [o for step in epilogue for o in step.operands()]
    y = tvm.runtime.tensor(np.zeros((g.batch, g.out_channels, *g.out_hw), dtype=np.float32))
    lib(*[tvm.runtime.tensor(a) for a in (x, w.reshape(g.out_channels, -1), *operands)], y)
    return y.numpy()


@settings(max_examples=16, deadline=None)
@given(case=planar_cases(), lanes=st.sampled_from([4, 16]), rows=st.sampled_from([1, 2, 3, 4]))
def test_kernel_matches_pytorch(case, lanes, rows):
    """Every knob: the vector lanes, and output rows per step (3 leaves a last step that overlaps its
    neighbour on most heights; a step taller than the output is clamped)."""
    g, groups, seed = case
    assert supports(g, groups)
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((g.out_channels, g.in_channels // groups, *g.kernel)).astype(np.float32)
    x = rng.standard_normal((g.batch, g.in_channels, g.height, g.width)).astype(np.float32)
    pt, pl, pb, pr = g.padding
    padded = torch.nn.functional.pad(torch.from_numpy(x), (pl, pr, pt, pb))
    ref = torch.nn.functional.conv2d(padded, torch.from_numpy(w), stride=g.stride, groups=groups).numpy()
    assert_matches(run_planar(g, groups, x, w, lanes, rows=rows), ref, rtol=1e-5)


def test_kernel_applies_its_epilogue():
    """BatchNorm as one per-channel FMA, then ReLU6: both clip bounds are hit."""
    g = Conv2dGeometry(1, 8, 14, 14, 8, (3, 3), (2, 2), (1, 1, 1, 1))
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 1, 3, 3)).astype(np.float32)
    x = rng.standard_normal((1, 8, 14, 14)).astype(np.float32)
    scale, shift = rng.uniform(1, 3, 8).astype(np.float32), rng.normal(0, 1, 8).astype(np.float32)
    ours = run_planar(g, 8, x, w, 16, (Affine(scale, shift), Clip(0.0, 6.0)))
    conv = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=2, padding=1, groups=8).numpy()
    ref = np.clip(conv * scale[:, None, None] + shift[:, None, None], 0, 6)
    assert_matches(ours, ref, rtol=1e-5)
    assert (ours == 6).any() and (ours == 0).any()


@pytest.mark.parametrize("width, lanes, expected", [(112, 16, (16, 7)), (56, 16, (16, 4)), (14, 16, (8, 2)),
                                                    (7, 16, (4, 2)), (28, 4, (4, 7))])
def test_rows_are_covered_by_whole_vectors(width, lanes, expected):
    vl, count = row_vector(width, lanes)
    assert (vl, count) == expected and vl * count >= width and vl <= width


@pytest.mark.parametrize("width, height, lanes, rows", [(32, 32, 8, 2), (32, 32, 16, 2), (56, 56, 16, 1),
                                                        (112, 112, 8, 1), (16, 16, 4, 2), (8, 1, 8, 1)])
def test_untuned_kernels_take_two_rows_while_their_accumulators_fit(width, height, lanes, rows):
    """Two output rows per step where their accumulators hold at most ``MAX_ACCUMULATOR_LANES`` floats (a
    32-wide row is 4 vectors of 8 or 2 of 16: 64 floats for two rows; a 56-wide one 4 overlapping vectors
    of 16: 128), never more rows than the output has."""
    g = Conv2dGeometry(1, 8, height + 2, width + 2, 8, (3, 3))
    conv = PlanarConv.untuned(g, 8, lanes)
    assert conv.rows == rows and recipe_of(conv.kernel())["rows"] == rows
    vl, vectors = row_vector(width, conv.lanes)
    assert (rows == 2) == (2 * vectors * vl <= MAX_ACCUMULATOR_LANES and height >= 2)


class StemAndDepthwise(nn.Module):
    """MobileNetV2's planar convs: the RGB stem and 3x3 depthwise convs (stride 1 and 2), each + BN + ReLU6,
    then layers the pass must leave alone: a grouped (not depthwise) conv and a depthwise conv whose
    output rows are too narrow to vectorize."""

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, 2, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU6())
        self.dw1 = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1, groups=channels, bias=False),
                                 nn.BatchNorm2d(channels), nn.ReLU6())
        self.dw2 = nn.Sequential(nn.Conv2d(channels, channels, 3, 2, 1, groups=channels, bias=True),
                                 nn.BatchNorm2d(channels), nn.ReLU6())
        self.grouped = nn.Conv2d(channels, channels, 3, 1, 1, groups=2)
        self.narrow = nn.Conv2d(channels, channels, 3, 2, 1, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.narrow(self.grouped(self.dw2(self.dw1(self.stem(x)))))


def test_pass_lowers_planar_layers_with_their_epilogue(tmp_path):
    torch.manual_seed(0)
    model = StemAndDepthwise().eval()
    shape = (1, 3, 24, 24)
    calibrate_batchnorm(model, shape)
    imported = import_model(model, shape, tmp_path)
    target = codegen_target(load_target("host"))
    with target:
        scheduled = schedule_default(imported.mod, target)
        vm = relax.VirtualMachine(tvm.compile(scheduled, target=target), tvm.cpu())
    recipes = [recipe_of(scheduled[b.value.args[0]]) for block in scheduled["main"].body.blocks
               for b in block.bindings if isinstance(b.value, relax.Call) and b.value.op == CALL_TIR]
    lowered = [r for r in recipes if r is not None and r["op"] == "planar_conv2d"]
    assert [r["epilogue"] for r in lowered] == [["affine", "clip(0.0,6.0)"]] * 3
    assert [(r["groups"], r["geometry"]["stride"]) for r in lowered] == [(1, [2, 2]), (16, [1, 1]), (16, [2, 2])]
    assert len(recipes) == 5, "the grouped and the narrow conv stay Relax ops, scheduled by the default rules"
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert_matches(vm["main"](tvm.runtime.tensor(x)).numpy(), ref, rtol=1e-4)


def test_pass_leaves_non_cpu_targets_alone(tmp_path):
    model = nn.Conv2d(8, 8, 3, padding=1, groups=8).eval()
    imported = import_model(model, (1, 8, 16, 16), tmp_path)
    lowering = LowerPlanarConv2d()
    with tvm.target.Target(load_target("opencl").tvm_target()):
        assert lowering(imported.mod).same_as(imported.mod) and lowering.lowered == 0
    with codegen_target(load_target("host")):
        lowering(imported.mod)
    assert lowering.lowered == 1


def test_kernels_promise_llvm_their_buffers_do_not_alias():
    """TVM 0.27 reads ``tirx.noalias`` (the ``tir.`` spelling is silently ignored): without it LLVM must
    assume every store may change the weights and inputs it reads, and reloads them."""
    g = Conv2dGeometry(1, 8, 16, 16, 8, (3, 3), (1, 1), (1, 1, 1, 1))
    lib = tvm.tirx.build(planar_conv2d(g, 8, 16), target="llvm")
    assert "noalias" in lib.inspect_source("ll")


def test_column_strides_beyond_two_stay_with_the_default_rules():
    """The staging writes two column phases: a stride-3 conv would read a phase never written."""
    g = Conv2dGeometry(1, 8, 30, 30, 8, (3, 3), (1, 2), (1, 1, 1, 1))
    assert supports(g, 8)
    assert not supports(Conv2dGeometry(1, 8, 30, 30, 8, (3, 3), (1, 3), (1, 1, 1, 1)), 8)
    assert supports(Conv2dGeometry(1, 8, 30, 30, 8, (3, 3), (3, 1), (1, 1, 1, 1)), 8), "row strides need no phases"
