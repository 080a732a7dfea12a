"""The projection is the exact Euclidean projection onto pruned/unified/free blocks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_unify.unify.project import (FREE, PRUNED, UNIFIED, assign_blocks, block_counts, classify_blocks,
                                     project_blocks, project_layer, project_weight)
from tvm_unify.unify.spec import LayerSpec
from tvm_unify.format import from_blocks, to_blocks

SHAPES = [((8, 12), (2, 4)), ((8, 12, 3, 3), (1, 4)), ((16, 8, 3, 3), (4, 4)), ((4, 6, 1, 1), (2, 3)),
          ((8, 4, 5, 5), (8, 2))]


@st.composite
def layers(draw):
    shape, block = draw(st.sampled_from(SHAPES))
    layout = draw(st.sampled_from(["tap", "flat"]))
    sparsity = draw(st.floats(0.0, 0.95))
    unified = draw(st.sampled_from([1.0, 0.0, 0.5, 0.8]))
    seed = draw(st.integers(0, 2**31 - 1))
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return weight, LayerSpec(block, sparsity, unified, layout)


@settings(max_examples=60, deadline=None)
@given(layers())
def test_projection_is_idempotent_and_structured(case):
    weight, spec = case
    projected, kinds = project_layer(weight, spec)
    assert torch.equal(project_layer(projected, spec)[0], projected)  # bit-exact fixed point
    measured = classify_blocks(projected, spec.block, spec.layout)
    pruned, free = block_counts(kinds.numel(), spec)
    assert int((kinds == PRUNED).sum()) == pruned and int((kinds == FREE).sum()) == free
    # A free block may happen to look unified (e.g. 1 weight); never the other way round.
    assert torch.equal(measured == PRUNED, kinds == PRUNED)
    assert torch.all(measured[kinds == UNIFIED] == UNIFIED)


@settings(max_examples=40, deadline=None)
@given(layers())
def test_error_equals_closed_form(case):
    weight, spec = case
    projected, kinds = project_layer(weight, spec)
    blocks = to_blocks(weight, spec.block, spec.layout).double()
    n = blocks.shape[1]
    energy = blocks.square().sum(1)
    unified_err = energy - n * blocks.abs().mean(1).square()
    expected = energy[kinds == PRUNED].sum() + unified_err[kinds == UNIFIED].sum()
    actual = (weight.double() - projected.double()).square().sum()
    assert float(actual) == pytest.approx(float(expected), rel=1e-5, abs=1e-9)


@settings(max_examples=30, deadline=None)
@given(layers(), st.integers(0, 2**31 - 1))
def test_beats_random_feasible_choices(case, seed):
    """Any other signs, magnitudes or choice of pruned blocks in the set is at least as far from W."""
    weight, spec = case
    projected, kinds = project_layer(weight, spec)
    best = float((weight - projected).square().sum())
    gen = torch.Generator().manual_seed(seed)
    blocks = to_blocks(weight, spec.block, spec.layout)
    ours = to_blocks(projected, spec.block, spec.layout)
    for _ in range(10):
        signs = torch.where(torch.rand(ours.shape, generator=gen) < 0.2, -1.0, 1.0)
        scale = 1 + 0.3 * torch.randn(ours.shape[0], 1, generator=gen)
        unified = kinds[:, None] == UNIFIED
        other = torch.where(unified, ours * signs * scale, ours)  # perturbed signs and magnitudes
        shuffled = kinds[torch.randperm(kinds.numel(), generator=gen)]  # another choice of kinds
        other_kinds = project_blocks(blocks, shuffled)
        for candidate in (other, other_kinds):
            assert float((blocks - candidate).square().sum()) >= best - 1e-5 * (1 + best)


def test_three_way_assignment_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(150):
        count = 6
        blocks = torch.from_numpy(rng.standard_normal((count, 3)) * rng.uniform(0.1, 2, (count, 1)))
        pruned = int(rng.integers(0, count))
        free = int(rng.integers(0, count - pruned + 1))
        ours = float((project_blocks(blocks, assign_blocks(blocks, pruned, free)) - blocks).square().sum())
        best = min(
            float((project_blocks(blocks, torch.tensor(kinds, dtype=torch.int8)) - blocks).square().sum())
            for kinds in itertools.product([PRUNED, UNIFIED, FREE], repeat=count)
            if kinds.count(PRUNED) == pruned and kinds.count(FREE) == free
        )
        assert ours == pytest.approx(best, rel=1e-12, abs=1e-12)


def test_unified_block_keeps_signs_and_mean_magnitude():
    weight = torch.tensor([[0.5, -1.0, 0.0, 2.5], [0.1, 0.1, -0.1, 0.1]])
    out = project_weight(weight, (1, 4), sparsity=0.5)
    assert torch.equal(out[0], torch.tensor([1.0, -1.0, 1.0, 1.0]))  # mean |w| = 1, sign(0) = +1
    assert torch.equal(out[1], torch.zeros(4))  # the smaller n*mean|w|^2 is pruned


@pytest.mark.parametrize("layout", ["tap", "flat"])
def test_tiling_round_trip_and_order(layout):
    weight = torch.randn(8, 12, 3, 3)
    blocks = to_blocks(weight, (2, 4), layout)
    assert torch.equal(from_blocks(blocks, tuple(weight.shape), (2, 4), layout), weight)
    if layout == "tap":  # block 0: out 0-1, in 0-3 at tap (0, 0); the next block moves along in
        assert torch.equal(blocks[0], weight[0:2, 0:4, 0, 0].reshape(-1))
        assert torch.equal(blocks[1], weight[0:2, 4:8, 0, 0].reshape(-1))
    else:  # flat: out x (in*kh*kw) in PyTorch's order
        assert torch.equal(blocks[0], weight.reshape(8, -1)[0:2, 0:4].reshape(-1))


def test_classify_reads_exact_values():
    weight = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.3, -0.3, 0.3, 0.3], [0.3, -0.3, 0.3, 0.30001]])
    assert classify_blocks(weight, (1, 4)).tolist() == [PRUNED, UNIFIED, FREE]
