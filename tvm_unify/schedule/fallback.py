"""Last-resort CPU schedule: any PrimFunc no other rule took still runs vectorized and in parallel.

Injective chains (concat, transpose, padding, standalone elementwise ops) are inlined into their
consumers and then vectorized along the innermost axis; reduction blocks (global pooling, mean)
run their leading spatial loops in parallel. Every transformation here preserves the loop nest's
semantics, so it is safe on patterns no specific rule understands.
"""

from __future__ import annotations

import math

from tvm import s_tir
from tvm.s_tir.dlight.analysis import SBlockInfo

from .common import CPURule, extent, inline_spatial_producers, is_spatial, parallel_spatial, schedule_injective


class Fallback(CPURule):
    """dlight rule that applies to every PrimFunc whose loop nests normalize."""

    def schedule(self, sch: s_tir.Schedule, infos: list[SBlockInfo], lanes: int) -> bool:
        for info in inline_spatial_producers(sch, infos):
            if is_spatial(sch, info):
                schedule_injective(sch, info.block_rv, lanes)
                continue
            kinds = info.dom_kind()
            leading = len(kinds) - len(kinds.lstrip("S"))
            loops = sch.get_loops(info.block_rv)
            extents = [extent(sch, loop) for loop in loops]
            if None not in extents:
                parallel_spatial(sch, loops[:leading], points=math.prod(extents))
        return True
