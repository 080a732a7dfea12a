"""Shared fixtures: built-in models exported once per session as BatchNorm-calibrated TorchScript."""

from __future__ import annotations

from pathlib import Path

import pytest

from tvm_unify.models.calibration import calibrate_batchnorm
from tvm_unify.models import get_builtin
from tvm_unify.torchscript import save_torchscript


@pytest.fixture(scope="session")
def builtin_pt(tmp_path_factory: pytest.TempPathFactory):
    """Return a function name -> path of that built-in model saved as TorchScript (cached)."""
    root = tmp_path_factory.mktemp("builtin")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            builtin = get_builtin(name)
            path = root / f"{name}.pt"
            model = calibrate_batchnorm(builtin.factory(), builtin.input_shape)
            save_torchscript(model, path, builtin.input_shape, {"model": name})
            cache[name] = path
        return cache[name]

    return get
