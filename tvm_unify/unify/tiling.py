"""Cutting a weight into micro-blocks and putting it back: the one place that knows the block order.

Blocks come out as an ``(N, rows*cols)`` tensor, ordered tap-major (``tap`` layout: ``ky, kx``), then
block row (out channels), then block column (in channels); inside a block, row-major. Both directions
are pure permutes and reshapes, so a round trip is bit-exact.
"""

from __future__ import annotations

import torch

from .spec import matrix_shape


def to_blocks(weight: torch.Tensor, block: tuple[int, int], layout: str = "tap") -> torch.Tensor:
    """``(N, rows*cols)`` view of ``weight`` cut into ``block`` tiles (see the module docstring)."""
    taps, rows, cols = matrix_shape(tuple(weight.shape), layout)
    bo, bi = block
    mats = _as_matrices(weight, layout).reshape(taps, rows // bo, bo, cols // bi, bi)
    return mats.permute(0, 1, 3, 2, 4).reshape(-1, bo * bi)


def from_blocks(
    blocks: torch.Tensor, shape: tuple[int, ...], block: tuple[int, int], layout: str = "tap"
) -> torch.Tensor:
    """Inverse of ``to_blocks``: the weight of ``shape`` whose blocks are ``blocks``."""
    taps, rows, cols = matrix_shape(tuple(shape), layout)
    bo, bi = block
    mats = blocks.reshape(taps, rows // bo, cols // bi, bo, bi).permute(0, 1, 3, 2, 4)
    mats = mats.reshape(taps, rows, cols)
    if layout == "flat" or len(shape) == 2:
        return mats.reshape(shape)
    out, inp, *kernel = shape
    return mats.reshape(*kernel, out, inp).permute(len(kernel), len(kernel) + 1, *range(len(kernel)))


def _as_matrices(weight: torch.Tensor, layout: str) -> torch.Tensor:
    """The weight as ``(taps, rows, cols)``: per-tap ``(out, in)`` slices, or one flattened matrix."""
    if layout == "flat" or weight.dim() == 2:
        return weight.reshape(1, weight.shape[0], -1)
    kernel_dims = list(range(2, weight.dim()))
    return weight.permute(*kernel_dims, 0, 1).reshape(-1, weight.shape[0], weight.shape[1])
