"""The compressed format: exact round trip, bit layout, block detection, and verification that never
trusts metadata (wrong block shape, lying sparsity, a corrupted weight)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tvm_unify.errors import UserError
from tvm_unify.format import BlockSpec, analyze, decode, specs_from_metadata, to_matrix, verify
from tvm_unify.testing import project

BLOCKS = [(1, 2), (2, 1), (1, 4), (4, 1), (2, 2), (4, 4), (1, 8), (8, 1), (2, 4)]


@st.composite
def unified_weights(draw):
    rows, cols = draw(st.sampled_from(BLOCKS))
    layout = draw(st.sampled_from(["tap", "flat"]))
    conv = draw(st.booleans())
    out = rows * draw(st.integers(1, 6))
    inp = cols * draw(st.integers(1, 6))
    shape = (out, inp, draw(st.sampled_from([1, 3])), draw(st.sampled_from([1, 3]))) if conv else (out, inp)
    sparsity = draw(st.sampled_from([0.0, 0.5, 0.75, 0.9]))
    seed = draw(st.integers(0, 2**16))
    w = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return project(w, (rows, cols), sparsity, layout), BlockSpec(rows, cols, layout), sparsity


@settings(max_examples=40, deadline=None)
@given(unified_weights())
def test_round_trip_is_exact(case):
    weight, spec, sparsity = case
    result = verify(weight, spec)
    assert result.ok, result.reason
    assert np.array_equal(decode(result.encoded), weight)
    mat = to_matrix(weight, spec.layout)
    tiles = np.abs(mat).reshape(mat.shape[0] // spec.rows, spec.rows, -1, spec.cols).max(axis=(1, 3))
    assert result.encoded.sparsity == pytest.approx((tiles == 0).mean())
    assert abs(result.encoded.sparsity - sparsity) <= 0.5 / tiles.size + 1e-9


@settings(max_examples=30, deadline=None)
@given(unified_weights())
def test_detection_without_spec_round_trips(case):
    weight, spec, _ = case
    result = analyze(weight)
    assert result.ok, result.reason
    found = result.encoded.spec
    assert found.rows * found.cols >= spec.rows * spec.cols  # the largest verifying block wins
    assert np.array_equal(decode(result.encoded), weight)


def test_bit_layout_is_little_endian_per_block():
    # one 1x8 block row: blocks [+a-a+a+a +a+a+a-a] then a pruned block, then [-b x8]
    a, b = 0.5, 0.25
    w = np.array([[a, -a, a, a, a, a, a, -a] + [0.0] * 8 + [-b] * 8], dtype=np.float32)
    enc = verify(w, BlockSpec(1, 8)).encoded
    assert enc.indptr.tolist() == [0, 2]
    assert enc.indices.tolist() == [0, 2]
    assert enc.scales.tolist() == [a, b]
    assert enc.signs.tolist() == [0b10000010, 0b11111111]
    assert enc.nbytes == 8 + 8 + 8 + 2 + 8  # indptr, indices, scales, signs, the empty free part's indptr


def test_dense_weight_is_not_unified():
    w = np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32)
    result = analyze(w)
    assert not result.ok and "not unified" in result.reason


def test_one_corrupted_weight_fails_verification():
    w = project(np.random.default_rng(1).standard_normal((16, 32)).astype(np.float32), (4, 4), 0.5)
    w[np.nonzero(w)[0][0], np.nonzero(w)[1][0]] *= 1.01
    result = verify(w, BlockSpec(4, 4))
    assert not result.ok and "neither zero nor unified" in result.reason


def test_wrong_block_shape_in_spec_is_caught():
    w = project(np.random.default_rng(2).standard_normal((16, 32)).astype(np.float32), (1, 4), 0.5)
    result = analyze(w, BlockSpec(4, 4, sparsity=0.5))
    assert not result.ok and "neither zero nor unified" in result.reason


def test_lying_sparsity_in_spec_is_caught():
    w = project(np.random.default_rng(3).standard_normal((16, 32)).astype(np.float32), (2, 2), 0.5)
    result = analyze(w, BlockSpec(2, 2, sparsity=0.9))
    assert not result.ok and "claims sparsity 0.900" in result.reason
    assert analyze(w, BlockSpec(2, 2, sparsity=0.5)).ok


def test_tap_blocks_never_straddle_taps():
    w = np.zeros((4, 6, 2, 2), dtype=np.float32)  # 6 input channels: 4-wide tap blocks do not fit...
    assert "input channels" in verify(w, BlockSpec(1, 4, "tap")).reason
    assert verify(w, BlockSpec(1, 4, "flat")).ok  # ...while flat blocks only need to tile 6*4 columns


def test_free_blocks_only_when_allowed_and_round_trip():
    rng = np.random.default_rng(4)
    w = project(rng.standard_normal((8, 16)).astype(np.float32), (2, 4), 0.5)
    kept = np.argwhere(np.abs(w).reshape(4, 2, 4, 4).sum(axis=(1, 3)) > 0)[0]
    r, c = kept
    w[2 * r:2 * r + 2, 4 * c:4 * c + 4] = rng.standard_normal((2, 4))
    assert not verify(w, BlockSpec(2, 4)).ok
    result = verify(w, BlockSpec(2, 4, allow_free=True))
    assert result.ok and result.encoded.free_indices.size == 1
    assert np.array_equal(decode(result.encoded), w)


def test_specs_from_metadata():
    meta = {"unify": {"format": 1, "layers": [
        {"name": "a", "block": [1, 4], "layout": "tap", "sparsity": 0.75, "unified_fraction": 1.0},
        {"name": "b", "block": [2, 2], "layout": "flat", "sparsity": 0.5, "unified_fraction": 0.8}]}}
    specs = specs_from_metadata(meta)
    assert specs["a"] == BlockSpec(1, 4, "tap", 0.75, False)
    assert specs["b"] == BlockSpec(2, 2, "flat", 0.5, True)
    assert specs_from_metadata({}) == {}
    with pytest.raises(UserError, match="bad block spec"):
        specs_from_metadata({"unify": {"layers": [{"name": "a", "block": [0, 4]}]}})


def test_training_side_free_blocks_verify_only_when_allowed():
    w = project(np.random.default_rng(6).standard_normal((16, 32)).astype(np.float32), (2, 4), 0.5, unified=0.5)
    assert not verify(w, BlockSpec(2, 4)).ok
    result = verify(w, BlockSpec(2, 4, sparsity=0.5, allow_free=True))
    assert result.ok and result.encoded.free_indices.size == result.encoded.nnzb
    assert np.array_equal(decode(result.encoded), w)
