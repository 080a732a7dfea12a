"""Every built-in model compiles for the host and matches PyTorch; aarch64 builds are aarch64 ELFs."""

from __future__ import annotations

import numpy as np
import pytest

from tvm_unify.testing import assert_matches, torch_reference
from tvm_unify.compiler import compile_model
from tvm_unify.frontend import import_torchscript
from tvm_unify.runtime.local import library_arch, run_local

FAST = ["digits-cnn", "mlp", "resnet18", "mobilenetv2"]
LARGE = [pytest.param("resnet18-224", marks=pytest.mark.slow),
         pytest.param("mobilenetv2-224", marks=pytest.mark.slow)]


@pytest.mark.parametrize("name", FAST + LARGE)
def test_host_build_matches_pytorch(name, builtin_pt, tmp_path):
    imported = import_torchscript(builtin_pt(name))
    so = tmp_path / f"{name}.so"
    compile_model(imported, "host", so)
    x = np.random.default_rng(1).standard_normal(imported.input_shape).astype("float32")
    assert_matches(run_local(so, x), torch_reference(imported, x))


@pytest.mark.parametrize("target", ["arm", "a76"])
def test_aarch64_library_is_aarch64_elf(target, builtin_pt, tmp_path):
    so = tmp_path / "model.so"
    result = compile_model(builtin_pt("digits-cnn"), target, so)
    assert result.target == target
    assert library_arch(so) == "aarch64"
    assert not list(tmp_path.glob(".model.so*")), "temp file left behind"


@pytest.mark.slow
@pytest.mark.parametrize("name", FAST)
def test_every_builtin_compiles_for_arm(name, builtin_pt, tmp_path):
    so = tmp_path / f"{name}-arm.so"
    compile_model(builtin_pt(name), "arm", so)
    assert library_arch(so) == "aarch64"
