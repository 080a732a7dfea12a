"""Helpers shared by the CPU schedule rules: vector width, tile sizes, loop extents, injective loops."""

from __future__ import annotations

import math

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import SBlockInfo, normalize_prim_func
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target
from tvm.target.codegen import llvm_get_vector_width

# Spatial positions per register tile. With two vectors per position that is 16 accumulators: half
# the 32 vector registers of AVX-512 and AArch64 NEON, the rest holding weights and broadcasts.
REGISTER_TILE = 8


def is_cpu(target: Target) -> bool:
    """The rules emit plain loops for LLVM CPU code generation only."""
    return target.kind.name == "llvm"


class CPURule(ScheduleRule):
    """A dlight rule for LLVM CPU targets that works on the normalized blocks of a PrimFunc.

    Subclasses implement ``schedule``: transform ``sch`` and return True, or return False when the
    function is not theirs (the partly transformed schedule is then dropped).
    """

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not is_cpu(target):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if not infos:
            return None
        return sch if self.schedule(sch, infos, vector_lanes(target)) else None

    def schedule(self, sch: s_tir.Schedule, infos: list[SBlockInfo], lanes: int) -> bool:
        raise NotImplementedError


def vector_lanes(target: Target, dtype_bits: int = 32) -> int:
    """Lanes of one SIMD register for ``dtype_bits`` elements (16 fp32 on AVX-512, 4 on NEON)."""
    bits = llvm_get_vector_width(target)
    return max((bits if bits > 0 else 128) // dtype_bits, 1)


def extent(sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV) -> int | None:
    """A loop's constant extent, or None when it is symbolic."""
    value = sch.get(loop).extent
    return int(value) if isinstance(value, tirx.IntImm) else None


def largest_divisor(n: int, limit: int) -> int:
    """The largest divisor of ``n`` not above ``limit`` (at least 1): a tile that needs no tail."""
    return max(d for d in range(1, max(min(n, limit), 1) + 1) if n % d == 0)


def is_spatial(sch: s_tir.Schedule, info: SBlockInfo) -> bool:
    """A block with only data-parallel iterators and no init: safe to inline or vectorize freely.

    The normalized ``dom_kind`` drops unit loops, so a reduction over one element looks spatial
    there; inlining an epilogue into such a block makes TVM add the epilogue into its init too.
    """
    block = sch.get(info.block_rv)
    return block.init is None and all(iv.iter_type == tirx.IterVar.DataPar for iv in block.iter_vars)


def inline_spatial_producers(sch: s_tir.Schedule, infos: list[SBlockInfo]) -> list[SBlockInfo]:
    """Inline every spatial block that has a consumer into it; return the blocks that remain."""
    remaining = []
    for info in infos:
        if is_spatial(sch, info) and sch.get_consumers(info.block_rv):
            try:
                sch.compute_inline(info.block_rv)
                continue
            except s_tir.ScheduleError:
                pass
        remaining.append(info)
    return remaining


# Below this many points a loop nest runs on one thread: waking the pool costs more than it saves.
MIN_PARALLEL_POINTS = 4096


def schedule_injective(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, lanes: int) -> None:
    """Vectorize a spatial block's innermost run and spread its outer loops over threads.

    The innermost loop is vectorized only in whole vectors (a divisor of its extent, at least 4
    lanes or the whole loop), so no tail predicate keeps LLVM from emitting vector code; otherwise
    it stays a plain inner loop for LLVM's own vectorizer. The loops outside run in parallel.
    """
    loops = sch.get_loops(block)
    extents = [extent(sch, loop) for loop in loops]
    if not loops or None in extents:
        return
    width = largest_divisor(extents[-1], lanes)
    if width > 1 and (width == extents[-1] or width >= 4):
        if width < extents[-1]:
            loops = [*loops[:-1], *sch.split(loops[-1], factors=[None, width])]
        sch.vectorize(loops[-1])
    parallel_spatial(sch, loops[:-1], points=math.prod(extents))


def parallel_spatial(sch: s_tir.Schedule, loops: list[s_tir.schedule.LoopRV], points: int) -> None:
    """Fuse ``loops`` (outer spatial loops of one block) into one parallel loop if the work is large."""
    if loops and points >= MIN_PARALLEL_POINTS:
        sch.parallel(sch.fuse(*loops) if len(loops) > 1 else loops[0])
