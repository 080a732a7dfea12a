"""Helpers shared by the tests and the benchmarks: unified weights made the way training makes them,
BatchNorm-calibrated built-ins, PyTorch references (fake-quantized for int8) and the tolerances the
comparisons use.

Never benchmark or test numerics on a raw random-init deep net: its activations shrink towards
denormals and its output collapses to the classifier bias, so a wrong kernel still "matches". Models
here are BatchNorm-calibrated (``models.calibration``), and ``assert_matches`` refuses a collapsed
reference (``docs/design.md``, Measuring).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import tvm
from torch import nn

from .format import to_matrix
from .kernels import Conv2dGeometry
from .frontend import ImportedModel, import_torchscript
from .frontend.int8_sensitivity import fake_quantize
from .models import get_builtin
from .models.calibration import calibrate_batchnorm
from .torchscript import save_torchscript
from .unify.project import project_weight

BLOCKS = [(1, 4), (4, 1), (2, 2), (4, 4), (1, 8), (2, 4), (8, 1)]  # block shapes the kernel tests draw
FP32_RTOL = 1e-4
INT8_RTOL_CAP = 0.1  # an int8 comparison looser than this is no check at all


def project(weight: np.ndarray, block: tuple[int, int], sparsity: float, layout: str = "tap",
            unified: float = 1.0) -> np.ndarray:
    """The exact projection training uses (signs kept, mean |w| per block, lowest-energy blocks pruned),
    on a numpy weight."""
    return project_weight(torch.from_numpy(np.asarray(weight, dtype=np.float32)), block, sparsity, layout,
                          unified).numpy()


@torch.no_grad()
def unify_model(model: nn.Module, block: tuple[int, int], sparsity: float, layout: str = "tap") -> list[str]:
    """Project every groups=1 conv (but a 3-channel stem) and hidden linear in place; return their names."""
    names = []
    for name, module in model.named_modules():
        eligible = (isinstance(module, nn.Conv2d) and module.groups == 1 and module.in_channels > 3) or (
            isinstance(module, nn.Linear) and module.out_features % block[0] == 0 and module.out_features > 16)
        if eligible and module.weight.shape[0] % block[0] == 0:
            w = module.weight.numpy()
            if to_matrix(w, layout).shape[1] % block[1] == 0:
                module.weight.copy_(torch.from_numpy(project(w, block, sparsity, layout)))
                names.append(name)
    return names


def unified_model(name: str, block: tuple[int, int] = (4, 4), sparsity: float = 0.75,
                  layout: str = "tap") -> tuple[nn.Module, list[str]]:
    """A BatchNorm-calibrated built-in with its eligible layers projected to unified blocks, BatchNorm
    re-fitted to the projected weights; and the names of those layers."""
    builtin = get_builtin(name)
    torch.manual_seed(0)
    model = calibrate_batchnorm(builtin.factory(), builtin.input_shape)
    names = unify_model(model, block, sparsity, layout)
    return calibrate_batchnorm(model, builtin.input_shape), names


def torch_reference(imported: ImportedModel, x: np.ndarray) -> np.ndarray:
    """What the imported model's TorchScript computes on ``x``."""
    with torch.no_grad():
        return imported.torch_module(torch.from_numpy(x)).numpy()


def assert_matches(ours: np.ndarray, ref: np.ndarray, rtol: float = FP32_RTOL) -> None:
    """Max abs error within ``rtol`` of the output's scale, and the output is not a constant.

    The second check guards against the collapsed-net trap: an output that does not depend on the input
    would "match" whatever the kernels compute.
    """
    assert ours.shape == ref.shape
    scale = float(np.abs(ref).max())
    assert scale > 1e-3, "reference output is ~0: the test net has collapsed"
    err = float(np.abs(ours - ref).max())
    assert err <= rtol * scale, f"max abs err {err:.3g} > {rtol:g} * scale {scale:.3g}"


def fake_quant_reference(model: nn.Module, names: list[str], x: np.ndarray, jitter: float = 0.0,
                         scales: dict[str, float] | None = None) -> np.ndarray:
    """PyTorch output with each unified layer's input quantized per tensor exactly as the int8 kernels do
    (scale max|x|/127, round(x * (1/scale)), clamp to +-127), so the int8 build is checked tightly.
    ``jitter`` first perturbs those inputs by that relative amount (float32 rounding is ~6e-8); ``scales``
    (module path -> scale) replaces the per-call max|x|/127 by given activation scales."""
    generator = torch.Generator().manual_seed(0)

    def quantize(module, inputs):
        (a,) = inputs
        a = a * (1 + jitter * torch.randn(a.shape, generator=generator))
        # the scale in float32 and its reciprocal computed in float32, as the kernels do
        scale = torch.tensor(scales[paths[module]]) if scales else a.abs().max().clamp_min(1e-30) / 127
        return (fake_quantize(a, scale),)

    modules = dict(model.named_modules())
    paths = {modules[n]: n for n in names}
    hooks = [modules[n].register_forward_pre_hook(quantize) for n in names]
    try:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()
    finally:
        for h in hooks:
            h.remove()


def rounding_sensitivity(model: nn.Module, names: list[str], x: np.ndarray,
                         scales: dict[str, float] | None = None) -> float:
    """How far the int8 reference moves (relative to its scale) when its quantized inputs are perturbed at
    float32-rounding level: a rounding decision that flips moves one activation a whole step, and with
    per-call scales (``scales`` None) a deep untrained net can amplify the flips to 40% of its output
    (MobileNetV2: each layer's scale follows its input's maximum, which the flips move)."""
    ref = fake_quant_reference(model, names, x, scales=scales)
    moved = fake_quant_reference(model, names, x, jitter=1e-7, scales=scales)
    return float(np.abs(moved - ref).max() / np.abs(ref).max())


def int8_rtol(model: nn.Module, names: list[str], x: np.ndarray, scales: dict[str, float] | None = None) -> float:
    """The tolerance of an int8 build against ``fake_quant_reference``: float32 noise plus three times the
    reference's own rounding sensitivity, capped at ``INT8_RTOL_CAP`` (a net that sensitive cannot be
    checked this way: give it calibrated ``scales``, as deployments do)."""
    rtol = 1e-3 + 3 * rounding_sensitivity(model, names, x, scales)
    assert rtol <= INT8_RTOL_CAP, f"int8 reference too sensitive to rounding (rtol {rtol:.3g})"
    return rtol


@torch.no_grad()
def input_abs_max_scales(model: nn.Module, names: list[str] | None, samples: np.ndarray) -> dict[str, float]:
    """Static int8 activation scales, ``max|input| / 127`` of each named layer (None: every Conv2d and
    Linear) over ``samples`` (N x input shape), measured with forward hooks on the eager model: the
    independent check of the compiler's own calibration (``frontend.calibrate_act_scales``)."""
    modules = dict(model.named_modules())
    names = names if names is not None else [n for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Linear))]
    seen: dict[str, float] = {}

    def record(name):
        def hook(_module, inputs):
            seen[name] = max(seen.get(name, 0.0), float(inputs[0].abs().max()))
        return hook

    hooks = [modules[n].register_forward_pre_hook(record(n)) for n in names]
    try:
        for sample in samples:
            model(torch.from_numpy(sample))
    finally:
        for h in hooks:
            h.remove()
    return {n: max(m, 1e-30) / 127 for n, m in seen.items()}


def run_kernel(func: tvm.tirx.PrimFunc, x: np.ndarray, weight, out_shape: tuple[int, ...]) -> np.ndarray:
    """Build one kernel for this host (plain ``llvm``) and run it on ``x`` and the weight's arrays."""
    lib = tvm.compile(func, target=tvm.target.Target({"kind": "llvm"}))
    y = tvm.runtime.tensor(np.zeros(out_shape, dtype=np.float32))
    lib(*[tvm.runtime.tensor(a) for a in (x, *weight.arrays)], y)
    return y.numpy()


def conv_reference(g: Conv2dGeometry, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """PyTorch's conv2d of ``x`` with ``weight`` in the geometry ``g`` (padding may be asymmetric)."""
    pt, pl, pb, pr = g.padding
    padded = torch.nn.functional.pad(torch.from_numpy(x), (pl, pr, pt, pb))
    return torch.nn.functional.conv2d(padded, torch.from_numpy(weight), stride=g.stride,
                                      dilation=g.dilation).numpy()


def conv_case(case, unified: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A ``conv_cases`` case's unified weight (with free blocks when ``unified`` < 1), input and PyTorch
    output. The case must have an output (callers ``assume`` it: hypothesis is a test dependency)."""
    g, block, layout, sparsity, seed = case
    rng = np.random.default_rng(seed)
    w = project(rng.standard_normal((g.out_channels, g.in_channels, *g.kernel)).astype(np.float32), block,
                sparsity, layout, unified)
    x = rng.standard_normal(g.input_shape).astype(np.float32)
    return w, x, conv_reference(g, x, w)


def conv_cases():
    """A hypothesis strategy of conv cases: (geometry, block, layout, sparsity, seed) over random shapes,
    strides, paddings and dilations (hypothesis is a test dependency, imported only here)."""
    from hypothesis import strategies as st

    @st.composite
    def cases(draw):
        rows, cols = draw(st.sampled_from(BLOCKS))
        layout = draw(st.sampled_from(["tap", "flat"]))
        k = draw(st.sampled_from([1, 3, 5]))
        channels = cols * draw(st.integers(1, 5))
        out = rows * draw(st.integers(1, 5))
        size = draw(st.integers(k, 12))
        geometry = Conv2dGeometry(
            batch=draw(st.sampled_from([1, 1, 2])), in_channels=channels, height=size,
            width=draw(st.integers(k, 12)), out_channels=out, kernel=(k, k),
            stride=draw(st.sampled_from([(1, 1), (2, 2), (1, 2)])),
            padding=draw(st.sampled_from([(0, 0, 0, 0), (1, 1, 1, 1), (k // 2,) * 4, (0, 1, 1, 0)])),
            dilation=draw(st.sampled_from([(1, 1), (1, 1), (2, 1)])))
        return geometry, (rows, cols), layout, draw(st.sampled_from([0.0, 0.5, 0.75, 0.9])), draw(st.integers(0, 999))

    return cases()


def import_model(model: nn.Module, input_shape: tuple[int, ...], tmp: Path) -> ImportedModel:
    """An eager model through the product's own path: saved as TorchScript in ``tmp``, then imported."""
    path = tmp / "m.pt"
    save_torchscript(model, path, input_shape)
    return import_torchscript(path)


def min_time(fn: Callable[[], object], rounds: int, number: int) -> float:
    """Seconds per call of ``fn``: the minimum over ``rounds`` of ``number`` calls, after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def torch_seconds(model: nn.Module, x: np.ndarray, samples: int, threads: int) -> float:
    """Minimum over single calls, with the better of 1 and ``threads`` threads: on a loaded 2-core host
    an OpenMP barrier that loses its core costs a whole scheduler slice, so PyTorch's means (even its
    medians) measure the neighbours, and one thread is sometimes faster than two."""
    xt = torch.from_numpy(x)
    best = float("inf")
    with torch.no_grad():
        for n in sorted({1, threads}):
            torch.set_num_threads(n)
            model(xt)
            best = min(best, min_time(lambda: model(xt), samples, 1))
    torch.set_num_threads(threads)
    return best
