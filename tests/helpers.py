"""Assertions shared by the tests."""

from __future__ import annotations

import numpy as np
import torch

from tvm_unify.frontend import ImportedModel


def torch_reference(imported: ImportedModel, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return imported.torch_module(torch.from_numpy(x)).numpy()


def assert_matches(ours: np.ndarray, ref: np.ndarray, rtol: float = 1e-4) -> None:
    """Max abs error within ``rtol`` of the output's scale, and the output is not a constant.

    The second check guards against the collapsed-net trap (design.md, Measuring): an output that does
    not depend on the input would "match" whatever the kernels compute.
    """
    assert ours.shape == ref.shape
    scale = float(np.abs(ref).max())
    assert scale > 1e-3, "reference output is ~0: the test net has collapsed"
    err = float(np.abs(ours - ref).max())
    assert err <= rtol * scale, f"max abs err {err:.3g} > {rtol:g} * scale {scale:.3g}"
