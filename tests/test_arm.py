"""aarch64 kernel variants: chosen from the target's features, emitted with the promised instructions,
and numerically right.

- which algorithm each preset gets (a target without dotprod never gets ``sdot``: SIGILL on a Cortex-A53);
- the int8 grid of ``DotWeight``/``PairWeight`` (signs kept, levels within half a grid step);
- ``dot4`` (the portable twin of ``sdot``: same layout, same integer sums) against PyTorch on the host;
- the assembly of tiny models cross-compiled per preset (``compile --emit-source``) holds ``sdot`` /
  ``smmla`` exactly where the target has them (cross-compiling needs no device);
- slow: every aarch64 variant on the emulated device (qemu ``max`` CPU has dotprod and i8mm): fp32 NEON
  against PyTorch, ``dot4``/``sdot``/``smmla`` bit-for-bit against the host's ``dot4`` (they compute the
  same int32 sums), which is itself checked against PyTorch within the quantization bound.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tvm_unify.compiler import compile_model
from tvm_unify.format import BlockSpec, verify
from tvm_unify.frontend import import_torchscript
from tvm_unify.kernels import (Conv2dGeometry, KernelOptions, cpu_features, default_algorithm, kernel_weight,
                               to_dot, to_ell, unified_conv2d, unified_dense)
from tvm_unify.kernels.smmla import to_pairs
from tvm_unify.targets import load_target
from tvm_unify.testing import project, run_kernel, unify_model
from tvm_unify.torchscript import save_torchscript

EXPECTED = {"host": "direct", "arm": "dot4", "rpi4": "dot4", "a55": "sdot", "a76": "sdot", "neoverse-v1": "smmla"}


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_int8_algorithm_follows_target_features(preset):
    features = cpu_features(load_target(preset).tvm_target())
    assert default_algorithm("int8", 64, features) == EXPECTED[preset]
    assert default_algorithm("fp32", 64, features) == "lut" and default_algorithm("int8", 1, features) == "gemv"
    assert default_algorithm("int8", 64, features, block=(4, 2)) in ("direct", "dot4")  # a word spans 4 k
    assert default_algorithm("int8", 98, features, group=49) in ("direct", "dot4")  # 4-pixel tiles


@pytest.mark.parametrize("preset", ["arm", "rpi4"])
def test_no_dotprod_target_never_gets_sdot(preset):
    features = cpu_features(load_target(preset).tvm_target())
    assert not features.dotprod and not features.i8mm
    for block in [(4, 4), (2, 4), (8, 8), (1, 4)]:
        for columns in [4, 16, 64, 1024]:
            assert default_algorithm("int8", columns, features, block) not in ("sdot", "smmla")


def _unified_weight(rows: int, cols: int, block: tuple[int, int], sparsity: float, seed: int) -> np.ndarray:
    w = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    return project(w, block, sparsity)


def _grid_weight(weight) -> np.ndarray:
    """The dense matrix a DotWeight computes with: int8 levels times each block row's grid scale."""
    levels = weight.words.view(np.int8).reshape(*weight.words.shape[:2], weight.rows, weight.cols)
    nbr = levels.shape[0]
    out = np.zeros((nbr * weight.rows, (weight.columns.max() + 1) * weight.cols), dtype=np.float32)
    for r in range(nbr):
        for s in range(levels.shape[1]):
            row = weight.order[r] * weight.rows
            col = weight.columns[r, s] * weight.cols
            out[row:row + weight.rows, col:col + weight.cols] += levels[r, s] * weight.row_scales[r]
    return out


@pytest.mark.parametrize("block", [(4, 4), (2, 8), (8, 4)])
def test_int8_grid_keeps_signs_within_half_a_step(block):
    w = _unified_weight(32, 64, block, 0.5, seed=3)
    dot = to_dot(to_ell(verify(w, BlockSpec(*block)).encoded))
    grid = _grid_weight(dot)[:, :w.shape[1]]
    assert (np.sign(grid) == np.sign(w)).all()
    step = np.repeat(dot.row_scales[np.argsort(dot.order)], block[0])[:, None]
    assert (np.abs(grid - w) <= step / 2 + 1e-7).all()
    pairs = to_pairs(to_ell(verify(w, BlockSpec(*block)).encoded)) if block[0] % 2 == 0 else None
    if pairs is not None:  # same weights, paired: every block's words appear once
        assert sorted(pairs.words[pairs.words != 0].tolist()) == sorted(dot.words[dot.words != 0].tolist())


def _int8_bound(x: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Half a quantization step of every activation times each row's |weights| (plus float slack)."""
    return 0.5 * np.abs(x).max() / 127 * np.abs(grid).sum(axis=1) * 1.001 + 1e-5


@pytest.mark.parametrize("block,batch", [((4, 4), 4), ((2, 8), 8), ((8, 4), 16)])
def test_dot4_dense_matches_grid_weights(block, batch):
    w = _unified_weight(32, 64, block, 0.75, seed=7)
    weight = kernel_weight(to_ell(verify(w, BlockSpec(*block)).encoded), "int8", batch, "dot4")
    x = np.random.default_rng(8).standard_normal((batch, 64)).astype(np.float32)
    ours = run_kernel(unified_dense(batch, 64, 32, weight, KernelOptions("int8", algorithm="dot4", lanes=16)),
                      x, weight, (batch, 32))
    grid = _grid_weight(weight)[:, :64]
    assert (np.abs(ours - x @ grid.T) <= _int8_bound(x, grid)[None, :]).all()


@pytest.mark.parametrize("stride,padding,layout", [(1, 1, "tap"), (2, 1, "tap"), (1, 0, "flat")])
def test_dot4_conv2d_matches_pytorch(stride, padding, layout):
    g = Conv2dGeometry(1, 16, 8, 8, 32, (3, 3), (stride, stride), (padding,) * 4)
    rng = np.random.default_rng(stride * 10 + padding)
    w = project(rng.standard_normal((32, 16, 3, 3)).astype(np.float32), (4, 4), 0.75, layout)
    enc = verify(w, BlockSpec(4, 4, layout)).encoded
    x = rng.standard_normal((1, 16, 8, 8)).astype(np.float32)
    ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=stride, padding=padding).numpy()
    weight = kernel_weight(to_ell(enc), "int8", g.pixels, "dot4")
    ours = run_kernel(unified_conv2d(g, weight, layout, KernelOptions("int8", algorithm="dot4", lanes=16)),
                      x, weight, ref.shape)
    grid = _grid_weight(weight)
    bound = _int8_bound(x, grid) + np.repeat(weight.row_scales[np.argsort(weight.order)], 4) / 2 * np.abs(x).sum()
    assert (np.abs(ours - ref) <= bound[None, :, None, None]).all()
    assert np.abs(ours - ref).max() <= 0.03 * np.abs(ref).max()


class TinyNet(nn.Module):
    """One unified 3x3 conv (4x4 blocks) between a stem and a classifier that stay dense: one unified
    kernel, so a cross-compile takes seconds."""

    def __init__(self, channels: int = 16, size: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 2 * channels, 3, padding=1)
        self.fc = nn.Linear(2 * channels * size * size, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = TinyNet().eval()
    unify_model(model, (4, 4), 0.75)
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    save_torchscript(model, path, (1, 16, 8, 8), {"model": "tiny"})
    return path


def _opcodes(directory: Path) -> set[str]:
    return {m.group(1) for path in directory.glob("*.s") for m in re.finditer(r"^\s+([a-z][a-z0-9.]*)\s", path.read_text(), re.M)}


NO_DOTPROD = {"sdot", "smmla", "udot", "usdot"}


@pytest.mark.parametrize("preset,present,absent", [
    ("a76", {"sdot"}, {"smmla"}), ("neoverse-v1", {"smmla"}, set()), ("rpi4", set(), NO_DOTPROD),
    pytest.param("a55", {"sdot"}, {"smmla"}, marks=pytest.mark.slow),
    pytest.param("arm", set(), NO_DOTPROD, marks=pytest.mark.slow)])
def test_emitted_assembly_has_the_targets_int8_instructions(tiny_model, tmp_path, preset, present, absent):
    compile_model(tiny_model, preset, tmp_path / "m.so", mode="int8", emit_source=tmp_path / "src")
    ops = _opcodes(tmp_path / "src")
    assert present <= ops and not (absent & ops), sorted(ops & (present | absent))


# Random small unified convs: (in, out, size, stride, block, seed). Every aarch64 variant runs each one on
# the emulated device.
DEVICE_CASES = [(16, 32, 8, 1, (4, 4), 0), (32, 16, 6, 2, (4, 4), 1), (8, 32, 4, 1, (2, 8), 2),
                (24, 16, 8, 1, (8, 4), 3)]
VARIANTS = {"fp32-neon": ("a76", "fp32"), "int8-neon": ("arm", "int8"), "int8-sdot": ("a76", "int8"),
            "int8-smmla": ("neoverse-v1", "int8")}


@pytest.fixture(scope="module")
def arm_device():
    """An emulated aarch64 device with qemu's ``max`` CPU (NEON, dotprod, i8mm)."""
    from tvm_unify.device.emulator import start_device, stop_device
    from tvm_unify.device.procs import free_port
    from tvm_unify.runtime.rpc import DeviceSpec

    state = start_device(free_port(), qemu_cpu="max", log=print)
    yield DeviceSpec(state.host, state.port)
    stop_device(state.port)


def _on_device(spec, library: Path, x: np.ndarray) -> np.ndarray:
    from tvm_unify.runtime.rpc import load_remote, run_remote, with_device

    return with_device(spec, lambda session: run_remote(load_remote(session, library), [x]))


@pytest.mark.slow
@pytest.mark.parametrize("case", DEVICE_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}-s{c[3]}-{c[4][0]}x{c[4][1]}")
def test_aarch64_variants_on_the_emulated_device(arm_device, tmp_path, case):
    """fp32 NEON matches PyTorch; the three int8 variants give the same outputs (same int32 sums; the
    float rescale may round differently where the core's FMA contraction differs) and match PyTorch
    within int8 error. The 3x3-pixel case has no 4-pixel tiles: every target falls back to ``direct``."""
    cin, cout, size, stride, block, seed = case
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)).eval()
    assert unify_model(model, block, 0.75) == ["0"]
    shape = (1, cin, size, size)
    save_torchscript(model, tmp_path / "m.pt", shape, {"model": "conv"})
    imported = import_torchscript(tmp_path / "m.pt")
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    outputs = {}
    for name, (preset, mode) in VARIANTS.items():
        compile_model(imported, preset, tmp_path / f"{name}.so", mode=mode)
        outputs[name] = _on_device(arm_device, tmp_path / f"{name}.so", x)
    scale = np.abs(ref).max()
    assert np.abs(outputs["fp32-neon"] - ref).max() <= 1e-4 * scale
    assert np.abs(outputs["int8-neon"] - ref).max() <= 0.03 * scale
    for name in ("int8-sdot", "int8-smmla"):
        assert np.abs(outputs[name] - outputs["int8-neon"]).max() <= 1e-6 * scale, name


@pytest.mark.slow
def test_int8_arm_form_keeps_a_trained_models_accuracy(tmp_path):
    """The issue's bar on a trained digits-cnn (4x4, 75%): the aarch64 int8 kernels (``dot4``, whose int32
    sums ``sdot``/``smmla`` reproduce), calibrated on 64 training digits, agree with PyTorch on >= 99% of the
    held-out digits and lose <= 0.5 points of accuracy."""
    import tvm
    from tvm import relax

    from tvm_unify.compiler import compile_module, lower_unified
    from tvm_unify.data import load_task
    from tvm_unify.frontend import calibrate_act_scales
    from tvm_unify.pipeline import codegen_target
    from tvm_unify.unify import UnifyConfig, unify_builtin

    pt = tmp_path / "digits.pt"
    unify_builtin("digits-cnn", pt, UnifyConfig(block=(4, 4), sparsity=0.75), epochs=12, log=lambda *_: None)
    imported = import_torchscript(pt)
    task = load_task("digits", imported.input_shape)
    xs = np.stack([task.test[i][0].numpy()[None] for i in range(len(task.test))]).astype(np.float32)
    labels = np.array([int(task.test[i][1]) for i in range(len(task.test))])
    calibration = np.stack([task.train[i][0].numpy()[None] for i in range(64)]).astype(np.float32)
    mod, _ = lower_unified(imported, "int8", calibrate_act_scales(imported, calibration), tasks=2,
                           target=codegen_target(load_target("arm")))
    compile_module(mod, "host", tmp_path / "arm-form.so", imported.input_shape)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(tmp_path / "arm-form.so")), tvm.cpu())
    ours = np.concatenate([vm["main"](tvm.runtime.tensor(x)).numpy() for x in xs]).argmax(1)
    with torch.no_grad():
        ref = np.concatenate([imported.torch_module(torch.from_numpy(x)).numpy() for x in xs]).argmax(1)
    assert (ours == ref).mean() >= 0.99
    assert (ref == labels).mean() - (ours == labels).mean() <= 0.005
