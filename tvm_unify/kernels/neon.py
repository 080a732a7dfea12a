"""What an aarch64 target offers the unified kernels, read from the codegen target, and the vector
widths that fit its 32 NEON registers.

The features come from TVM's own parse of the target (``feature.is_aarch64``, ``feature.has_dotprod``,
``feature.has_matmul_i8``: derived from ``mattr`` and ``mcpu`` by LLVM), so a preset that names a core
(``cortex-a55``) gets its implied features, and a preset without dotprod never gets an ``sdot`` kernel:
on a Cortex-A53/A72 that instruction is SIGILL in the user's app.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm

# 128-bit NEON registers: 4 fp32/int32 lanes; a kernel's accumulators should leave about half of the
# 32 registers for operands.
NEON_LANES = 4
ACCUMULATOR_REGISTERS = 16


@dataclass(frozen=True)
class CpuFeatures:
    """The instruction-set facts kernel selection needs (all False: a generic or x86 CPU)."""

    aarch64: bool = False
    dotprod: bool = False  # sdot/udot: 4-way int8 dot products into int32 lanes
    i8mm: bool = False  # smmla: 2x8 by 8x2 int8 matrix products into a 2x2 int32 tile


def cpu_features(target: tvm.target.Target | None) -> CpuFeatures:
    """The features of an LLVM ``target`` (None or another kind: generic)."""
    if target is None or target.kind.name != "llvm":
        return CpuFeatures()
    attrs = target.attrs
    aarch64 = bool(attrs.get("feature.is_aarch64", False))
    return CpuFeatures(aarch64, aarch64 and bool(attrs.get("feature.has_dotprod", False)),
                       aarch64 and bool(attrs.get("feature.has_matmul_i8", False)))


def dot_lanes(block_rows: int, limit: int) -> int:
    """Pixels per tile of the int8 dot-product kernels: ``block_rows`` int32 accumulator vectors per 4
    pixels must fit ``ACCUMULATOR_REGISTERS`` (4x4 blocks: 16 pixels), at least one 4-pixel vector,
    at most ``limit``."""
    lanes = NEON_LANES
    while lanes * 2 <= limit and block_rows * lanes * 2 // NEON_LANES <= ACCUMULATOR_REGISTERS:
        lanes *= 2
    return lanes


def row_lanes(row: int | None, limit: int) -> int:
    """Pixels per tile of the fp32 kernels on NEON for a conv that gathers rows ``row`` pixels wide
    (None: the input is read in place): the largest power of two <= ``limit`` that divides the row, so a
    tile lies in one output row and its inputs load contiguously, if that is at least one vector.
    Measured on the emulated device (ResNet-18 3x3 layers at 4x4 and 8x8, 4x4 blocks, 75% pruned):
    16-pixel tiles over 4- and 8-pixel rows took 25% and 6% more instructions than row-sized tiles,
    whose gathers need a division per lane."""
    lanes = limit
    while row is not None and lanes > NEON_LANES and row % lanes:
        lanes //= 2
    return lanes
