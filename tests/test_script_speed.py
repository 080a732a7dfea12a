"""The TVMScript parser shortcuts (``kernels/script_speed.py``) change speed, not results: every kind of
kernel generated with them is structurally equal to the one TVM's own parser methods generate."""

from __future__ import annotations

import numpy as np
import pytest
import tvm_ffi

from tvm_unify.format import BlockSpec, verify
from tvm_unify.kernels import (Conv2dGeometry, KernelOptions, free_conv2d, kernel_weight, script_speed, to_ell,
                               to_free_ell, unified_conv2d, unified_dense)
from tvm_unify.testing import project

GEOMETRY = Conv2dGeometry(1, 8, 6, 6, 8, (3, 3), (1, 1), (1, 1, 1, 1))


def _ell(shape, allow_free=False):
    w = project(np.random.default_rng(0).standard_normal(shape).astype(np.float32), (4, 4), 0.5,
                unified=0.5 if allow_free else 1.0)
    return verify(w, BlockSpec(4, 4, allow_free=allow_free)).encoded


KERNELS = {
    "lut": lambda: unified_conv2d(GEOMETRY, kernel_weight(to_ell(_ell((8, 8, 3, 3))), "fp32", 36), "tap"),
    "direct int8": lambda: unified_conv2d(GEOMETRY, to_ell(_ell((8, 8, 3, 3))), "tap", KernelOptions("int8")),
    "gemv": lambda: unified_dense(1, 16, 8, to_ell(_ell((8, 16)))),
    "free": lambda: free_conv2d(GEOMETRY, to_free_ell(_ell((8, 8, 3, 3), allow_free=True)), "tap"),
}


@pytest.mark.parametrize("kind", sorted(KERNELS))
def test_shortcuts_generate_the_same_kernel(kind):
    fast = KERNELS[kind]()
    script_speed.uninstall()
    try:
        reference = KERNELS[kind]()
    finally:
        script_speed.install()
    assert tvm_ffi.structural_equal(fast, reference)
