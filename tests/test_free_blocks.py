"""Free (dense-valued) blocks: the free-block kernels match PyTorch, and layers whose spec allows free
blocks are lowered to ``unified kernel + free kernel`` and still match PyTorch end to end.

fp32 is exact up to summation order (rtol 1e-5 of the output's scale for one kernel, 1e-4 for a whole
net, as in test_lower_pass). In int8 mode only the unified part is quantized, so the reference
quantizes the input of the unified part alone (``split_free_blocks``).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import tvm
from hypothesis import assume, given, settings, strategies as st
from torch import nn

from tvm_unify.testing import assert_matches, torch_reference
from tvm_unify.testing import BLOCKS, conv_case, conv_cases, conv_reference
from tvm_unify.testing import fake_quant_reference, int8_rtol, run_kernel
from tvm_unify.models.calibration import calibrate_batchnorm
from tvm_unify.cli import main
from tvm_unify.compiler import compile_model, lower_unified
from tvm_unify.format import BlockSpec, verify
from tvm_unify.frontend import import_torchscript
from tvm_unify.kernels import free_conv2d, free_dense, to_ell, to_free_ell, unified_conv2d, unified_dense
from tvm_unify.models import get_builtin
from tvm_unify.passes import report_table
from tvm_unify.runtime.local import run_local
from tvm_unify.torchscript import load_torchscript, save_torchscript
from tvm_unify.unify.project import FREE, classify_blocks
from tvm_unify.format import from_blocks, to_blocks
from tvm_unify.testing import project

UNIFIED = [0.0, 0.5, 0.8]  # fraction of kept blocks that are unified; the rest are free


def free_part(weight: np.ndarray, block: tuple[int, int], layout: str = "tap") -> np.ndarray:
    """The weight with every block but the free ones zeroed (classified by the training side)."""
    w = torch.from_numpy(weight)
    blocks = to_blocks(w, block, layout)
    kinds = classify_blocks(w, block, layout)
    return from_blocks(blocks * (kinds == FREE)[:, None], tuple(w.shape), block, layout).numpy()


def both_parts(weight: np.ndarray, block, layout: str, make_unified, make_free, x: np.ndarray, out_shape):
    """(free kernel's output, unified + free kernels' output) for a weight with free blocks."""
    enc = verify(weight, BlockSpec(*block, layout, allow_free=True)).encoded
    ell, fell = to_ell(enc), to_free_ell(enc)
    free = run_kernel(make_free(fell), x, fell, out_shape)
    unified = run_kernel(make_unified(ell), x, ell, out_shape)
    return free, unified + free


def assert_close(ours: np.ndarray, ref: np.ndarray) -> None:
    assert np.abs(ours - ref).max() <= 1e-5 * max(np.abs(ref).max(), 1.0)


@settings(max_examples=10, deadline=None)
@given(conv_cases(), st.sampled_from(UNIFIED))
def test_free_conv2d_matches_pytorch(case, unified):
    g, block, layout, _, _ = case
    assume(min(g.out_hw) > 0)
    w, x, ref = conv_case(case, unified)
    free, total = both_parts(w, block, layout, lambda ell: unified_conv2d(g, ell, layout),
                             lambda fell: free_conv2d(g, fell, layout), x, ref.shape)
    assert_close(free, conv_reference(g, x, free_part(w, block, layout)))
    assert_close(total, ref)


@settings(max_examples=10, deadline=None)
@given(st.sampled_from(BLOCKS), st.integers(1, 8), st.integers(1, 8), st.sampled_from([1, 1, 3, 8]),
       st.sampled_from([0.0, 0.5, 0.75]), st.sampled_from(UNIFIED), st.integers(0, 999))
def test_free_dense_matches_pytorch(block, out_blocks, in_blocks, batch, sparsity, unified, seed):
    rng = np.random.default_rng(seed)
    out, inp = block[0] * out_blocks, block[1] * in_blocks
    w = project(rng.standard_normal((out, inp)).astype(np.float32), block, sparsity, "tap", unified)
    x = rng.standard_normal((batch, inp)).astype(np.float32)
    free, total = both_parts(w, block, "tap", lambda ell: unified_dense(batch, inp, out, ell),
                             lambda fell: free_dense(batch, inp, out, fell), x, (batch, out))
    assert_close(free, x @ free_part(w, block).T)
    assert_close(total, x @ w.T)


def test_free_ell_pads_rows_with_zero_valued_slots():
    w = np.zeros((4, 8), dtype=np.float32)
    w[0:2, 0:4] = [[1, 2, 3, 4], [5, 6, 7, 8]]
    w[0:2, 4:8] = 0.5  # unified: not in the free part
    w[2:4, 4:8] = [[1, -1, 2, 0], [0, 0, 0, 3]]
    fell = to_free_ell(verify(w, BlockSpec(2, 4, allow_free=True)).encoded)
    assert fell.columns.tolist() == [[0], [1]] and fell.count == 2 and fell.padding == 0.0
    assert fell.values[1, 0].tolist() == [[1, -1, 2, 0], [0, 0, 0, 3]]
    w[2:4, 0:4] = w[0:2, 0:4]  # row 1 now has two free blocks: row 0 gets a zero pad slot
    fell = to_free_ell(verify(w, BlockSpec(2, 4, allow_free=True)).encoded)
    assert fell.columns.tolist() == [[0, 0], [0, 1]] and fell.padding == 0.25
    assert not fell.values[0, 1].any() and fell.nbytes == 4 * 4 + 4 * 32  # 2x2 columns, 2x2 blocks of 2x4 values


# Per built-in: layer -> fraction of its kept blocks that are unified, as the metadata states it. mlp's
# net.2 keeps only free blocks (plain block pruning): it is lowered with the free kernel alone.
FREE_LAYERS = {"digits-cnn": {"features.3": 0.8, "features.7": 0.8, "features.10": 0.8},
               "mlp": {"net.0": 0.8, "net.2": 0.0}}


def free_block_model(name: str, metadata_unified: dict[str, float] | None = None):
    """A BatchNorm-calibrated built-in whose ``FREE_LAYERS`` are projected to 4x4 blocks, 75% pruned,
    with free blocks; the metadata states each layer's unified fraction (``metadata_unified``
    overrides it, to claim what the weights do not have)."""
    builtin = get_builtin(name)
    torch.manual_seed(0)
    model = calibrate_batchnorm(builtin.factory(), builtin.input_shape)
    with torch.no_grad():
        for layer, unified in FREE_LAYERS[name].items():
            weight = model.get_submodule(layer).weight
            weight.copy_(torch.from_numpy(project(weight.numpy(), (4, 4), 0.75, "tap", unified)))
    claims = {**FREE_LAYERS[name], **(metadata_unified or {})}
    records = [{"name": layer, "block": [4, 4], "layout": "tap", "sparsity": 0.75, "target_unified": unified}
               for layer, unified in claims.items()]
    return calibrate_batchnorm(model, builtin.input_shape), {"unify": {"format": 1, "layers": records}}


class SplitLayer(nn.Module):
    """A layer computed as its unified part plus its free part (bias in the unified part), so a hook can
    quantize the unified part's input alone, as the int8 kernels do."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.unified, self.free = copy.deepcopy(layer), copy.deepcopy(layer)
        with torch.no_grad():
            free = torch.from_numpy(free_part(layer.weight.numpy(), (4, 4)))
            self.unified.weight -= free
            self.free.weight.copy_(free)
            if self.free.bias is not None:
                self.free.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unified(x) + self.free(x)


def split_free_blocks(model: nn.Module, layers: list[str]) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` with ``layers`` split by ``SplitLayer``, and the unified parts' module paths."""
    model = copy.deepcopy(model)
    for layer in layers:
        parent, _, child = layer.rpartition(".")
        setattr(model.get_submodule(parent), child, SplitLayer(model.get_submodule(layer)))
    return model, [f"{layer}.unified" for layer in layers]


@pytest.mark.parametrize("name", ["digits-cnn", "mlp"])
@pytest.mark.parametrize("mode", ["fp32", "int8"])
def test_free_block_layers_are_lowered_and_match(tmp_path, name, mode):
    model, metadata = free_block_model(name)
    path = tmp_path / f"{name}.pt"
    save_torchscript(model, path, get_builtin(name).input_shape, metadata)
    imported = import_torchscript(path)
    so = tmp_path / f"{name}-{mode}.so"
    result = compile_model(imported, "host", so, mode=mode)
    lowered = {e.layer: e for e in result.report if e.lowered}
    assert set(lowered) == set(FREE_LAYERS[name])
    assert all(e.free_blocks > 0 and e.bytes_dense / 8 < e.bytes_after < e.bytes_dense for e in lowered.values())
    assert "free blocks" in report_table(result.report)
    x = np.random.default_rng(1).standard_normal(imported.input_shape).astype("float32")
    if mode == "fp32":
        assert_matches(run_local(so, x), torch_reference(imported, x), rtol=1e-4)
        return
    mixed = [layer for layer, unified in FREE_LAYERS[name].items() if unified > 0]
    split, unified_parts = split_free_blocks(model, mixed)
    rtol = int8_rtol(split, unified_parts, x)
    assert_matches(run_local(so, x), fake_quant_reference(split, unified_parts, x), rtol=rtol)


def test_free_and_unified_kernels_are_added_unified_first(tmp_path):
    model, metadata = free_block_model("mlp")
    path = tmp_path / "mlp.pt"
    save_torchscript(model, path, get_builtin("mlp").input_shape, metadata)
    mod, _ = lower_unified(import_torchscript(path))
    bindings = {b.var: b.value for block in mod["main"].body.blocks for b in block.bindings}

    def is_op(value, name: str) -> bool:
        return isinstance(value, tvm.relax.Call) and getattr(value.op, "name", None) == name

    adds = [v for v in bindings.values()
            if is_op(v, "relax.add") and all(is_op(bindings.get(a), "relax.call_tir") for a in v.args)]
    assert [[bindings[a].args[0].name_hint for a in add.args] for add in adds] == [["unified_linear_fp32",
                                                                                  "free_linear"]]


def test_free_blocks_stay_dense_unless_the_spec_allows_them(tmp_path):
    model, metadata = free_block_model("mlp", {"net.0": 1.0})
    path = tmp_path / "mlp.pt"
    save_torchscript(model, path, get_builtin("mlp").input_shape, metadata)
    _, report = lower_unified(import_torchscript(path))
    by_name = {e.layer: e for e in report}
    assert not by_name["net.0"].lowered and "neither zero nor unified" in by_name["net.0"].reason
    assert by_name["net.2"].lowered and by_name["net.2"].padding is None and by_name["net.2"].free_blocks
    path = tmp_path / "mlp-bare.pt"  # no metadata: candidate specs never allow free blocks
    save_torchscript(model, path, get_builtin("mlp").input_shape)
    _, report = lower_unified(import_torchscript(path))
    assert not any(e.lowered for e in report) and "not unified" in report[0].reason


def test_cli_unify_with_free_blocks_compiles_and_runs(tmp_path, capsys):
    pt, so = tmp_path / "m.pt", tmp_path / "m.so"
    assert main(["unify", "digits-cnn", "--one-shot", "--block", "4x4", "--sparsity", "0.75", "--unified", "0.8",
                 "--no-progress", "-o", str(pt)]) == 0
    assert main(["compile", str(pt), "--target", "host", "-o", str(so)]) == 0
    assert "lowered with" in capsys.readouterr().out
    module, metadata = load_torchscript(pt)
    x = np.random.default_rng(3).standard_normal(metadata["input_shape"]).astype("float32")
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "ref.npy", ref)
    assert main(["run", str(so), "--input", str(tmp_path / "x.npy"), "--reference", str(tmp_path / "ref.npy"),
                 "--rtol", "1e-4"]) == 0
