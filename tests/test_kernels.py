"""Each unified kernel matches PyTorch on the same unified weights, over random shapes and blocks.

fp32: within float summation order (rtol 1e-5 of the output's scale). int8: within the quantization
bound, stated and checked per output: |y - y_ref| <= act_scale/2 * sum_k |W[o, k]| (each activation is
off by at most half a quantization step; weights are exact), plus float slack.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from tvm_unify.format import BlockSpec, to_matrix, verify
from tvm_unify.kernels import Conv2dGeometry, KernelOptions, kernel_weight, to_ell, to_lut, unified_conv2d, unified_dense
from tvm_unify.kernels.ell import MAX_GROUPS, RowGroup, lut_bits, row_groups
from tvm_unify.testing import BLOCKS, conv_case, conv_cases, project, run_kernel

def check(ours: np.ndarray, ref: np.ndarray, x: np.ndarray, weight: np.ndarray, layout: str, mode: str,
          out_axis: int) -> None:
    if mode == "fp32":
        assert np.abs(ours - ref).max() <= 1e-5 * max(np.abs(ref).max(), 1.0)
        return
    act_scale = np.abs(x).max() / 127
    row_l1 = np.abs(to_matrix(weight, layout)).sum(axis=1)
    bound = 0.5 * act_scale * row_l1 * 1.001 + 1e-5 * np.abs(ref).max()
    shape = [1] * ref.ndim
    shape[out_axis] = -1
    assert (np.abs(ours - ref) <= bound.reshape(shape)).all()


def _conv(case, mode, algorithm=None, tasks=4):
    g, block, layout, _, _ = case
    assume(min(g.out_hw) > 0)
    w, x, ref = conv_case(case)
    enc = verify(w, BlockSpec(*block, layout)).encoded
    weight = kernel_weight(to_ell(enc), mode, ref.shape[0] * ref.shape[2] * ref.shape[3], algorithm)
    ours = run_kernel(unified_conv2d(g, weight, layout, KernelOptions(mode, algorithm=algorithm, tasks=tasks)), x, weight, ref.shape)
    check(ours, ref, x, w, layout, mode, out_axis=1)


@settings(max_examples=16, deadline=None)
@given(conv_cases(), st.sampled_from(["lut", "direct"]), st.sampled_from([1, 2, 3, 4]))
def test_conv2d_fp32_matches_pytorch(case, algorithm, tasks):
    _conv(case, "fp32", algorithm, tasks)


@pytest.mark.parametrize("algorithm", ["lut", "direct"])
@pytest.mark.parametrize("out_hw, batch", [((7, 7), 2), ((14, 14), 1), ((3, 5), 1)])
def test_odd_pixel_counts_use_whole_overlapping_vectors(algorithm, out_hw, batch):
    """An output whose pixel count no power of two divides (7x7: 49) is tiled with the widest vector that
    fits an image, the last tile of each image moved back to overlap its neighbour: 16 lanes, not 1."""
    g = Conv2dGeometry(batch, 8, out_hw[0], out_hw[1], 8, (3, 3), padding=(1, 1, 1, 1))
    case = (g, (4, 4), "tap", 0.5, 3)
    w, x, ref = conv_case(case)
    weight = kernel_weight(to_ell(verify(w, BlockSpec(4, 4, "tap")).encoded), "fp32", g.pixels, algorithm)
    func = unified_conv2d(g, weight, "tap", KernelOptions(algorithm=algorithm, lanes=16))
    vl = min(16, 1 << (out_hw[0] * out_hw[1]).bit_length() - 1)
    assert f"T.vectorized({vl})" in func.script(), "tiles are whole vectors of the widest width that fits"
    check(run_kernel(func, x, weight, ref.shape), ref, x, w, "tap", "fp32", out_axis=1)


@settings(max_examples=8, deadline=None)
@given(conv_cases())
def test_conv2d_int8_within_quantization_bound(case):
    _conv(case, "int8")


@settings(max_examples=12, deadline=None)
@given(st.sampled_from(BLOCKS), st.integers(1, 8), st.integers(1, 8), st.sampled_from([1, 1, 3, 8]),
       st.sampled_from([0.0, 0.75, 0.9]), st.sampled_from(["fp32", "int8"]), st.integers(0, 999))
def test_dense_matches_pytorch(block, out_blocks, in_blocks, batch, sparsity, mode, seed):
    rng = np.random.default_rng(seed)
    out, inp = block[0] * out_blocks, block[1] * in_blocks
    w = project(rng.standard_normal((out, inp)).astype(np.float32), block, sparsity)
    weight = kernel_weight(to_ell(verify(w, BlockSpec(*block)).encoded), mode, batch)
    x = rng.standard_normal((batch, inp)).astype(np.float32)
    ref = x @ w.T
    ours = run_kernel(unified_dense(batch, inp, out, weight, KernelOptions(mode)), x, weight, ref.shape)
    check(ours, ref, x, w, "tap", mode, out_axis=1)


def test_int8_with_given_activation_scale_clips():
    w = project(np.random.default_rng(5).standard_normal((8, 16)).astype(np.float32), (2, 4), 0.5)
    ell = to_ell(verify(w, BlockSpec(2, 4)).encoded)
    x = np.full((1, 16), 10.0, dtype=np.float32)  # beyond 127 * 0.01 = 1.27: clipped to 1.27
    ours = run_kernel(unified_dense(1, 16, 8, ell, KernelOptions("int8", act_scale=0.01)), x, ell, (1, 8))
    np.testing.assert_allclose(ours, np.full_like(x, 1.27) @ w.T, rtol=1e-5, atol=1e-6)


def test_ell_pads_rows_with_zero_scale_slots():
    w = np.zeros((4, 8), dtype=np.float32)
    w[0:2, 0:4] = 0.5
    w[0:2, 4:8] = -0.25
    w[2:4, 4:8] = 1.0
    ell = to_ell(verify(w, BlockSpec(2, 4)).encoded)
    assert ell.columns.tolist() == [[0, 1], [1, 0]]
    assert ell.scales.tolist() == [[0.5, 0.25], [1.0, 0.0]]
    assert ell.signs.dtype == np.uint8 and ell.signs[0, 1, 0] == 0xFF
    assert ell.groups == (RowGroup(0, 1, 2), RowGroup(1, 1, 1)) and ell.padding == 0.0


def test_ell_sorts_rows_longest_first_and_groups_them():
    w = np.zeros((8, 8), dtype=np.float32)
    w[4:6, :] = 0.5  # block row 2: two blocks
    w[6:8, 0:4] = 1.0  # block row 3: one block; rows 0 and 1 are empty
    ell = to_ell(verify(w, BlockSpec(2, 4)).encoded)
    assert ell.order.tolist() == [2, 3, 0, 1] and ell.counts.tolist() == [2, 1, 0, 0]
    assert ell.groups == (RowGroup(0, 1, 2), RowGroup(1, 1, 1), RowGroup(2, 2, 0))


def test_lut_entries_combine_column_and_sign_bits():
    w = np.zeros((2, 16), dtype=np.float32)
    w[0, 8:16] = [1, -1, 1, 1, -1, -1, -1, 1]  # one 1x8 block at block column 1
    lut = to_lut(to_ell(verify(w, BlockSpec(1, 8)).encoded))
    assert lut_bits(8) == 4 and lut.lookups == 2 and lut_bits(6) == 3 and lut_bits(5) == 1
    # lookup j of column c reads entry (c * 2 + j) * 16 + its 4 sign bits (bit t: weight 4j + t negative)
    assert lut.entries.dtype == np.uint16 and lut.entries[0, 0].tolist() == [2 * 16 + 0b0010, 3 * 16 + 0b0111]
    assert lut.order.tolist() == [0, 1] and lut.scales.tolist() == [[1.0], [0.0]]


def test_row_groups_cut_padding_and_cover_every_row():
    counts = np.sort(np.random.default_rng(0).integers(0, 40, size=97))[::-1]
    groups = row_groups(counts)
    assert 1 < len(groups) <= MAX_GROUPS and groups[0].start == 0
    assert all(a.start + a.size == b.start for a, b in zip(groups, groups[1:]))
    assert groups[-1].start + groups[-1].size == len(counts)
    assert all(g.width == counts[g.start] for g in groups)
    computed = sum(g.size * g.width for g in groups)
    assert computed < 0.7 * len(counts) * counts.max()  # one group would pad every row to the longest
    assert row_groups(np.full(10, 7)) == (RowGroup(0, 10, 7),)  # equal rows: nothing to gain
