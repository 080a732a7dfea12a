"""Register-tiled schedule for one-reduction loop nests: conv2d (dense, grouped, depthwise), matmul,
GEMV, pooling windows.

The shape it targets is ``out[s...] += data[...] * weight[..., v]`` where the spatial axis ``v`` is
the innermost axis of one operand. Convolutions reach this form because the pipeline converts their
kernels to HWIO (output channel innermost) while activations stay NCHW, and linear layers because
the importer transposes their constant weight to ``[in, out]``. Depthwise convs and pooling, whose
channels cannot share a vector, vectorize along the output width instead.

Each thread computes a register tile of ``v``-vectors x up to ``REGISTER_TILE`` positions of the
other spatial axes: the weight row is one vector load, every data element one broadcast, and the
accumulators live in a small local buffer that LLVM keeps in registers across the whole reduction.
The fused epilogue (bias, batch norm, residual add, ReLU...) runs on the finished tile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import tvm
from tvm import s_tir, sym, tirx
from tvm.s_tir.dlight.analysis import SBlockInfo
from tvm.tirx.analysis import undefined_vars

from .common import MIN_PARALLEL_POINTS, REGISTER_TILE, CPURule, is_spatial, largest_divisor, schedule_injective


@dataclass(frozen=True)
class ContractionPlan:
    """Which spatial axis is vectorized, how every spatial axis is tiled (1 = not tiled), and which
    dimension of the output buffer the vector axis indexes."""

    vector_axis: int
    tiles: tuple[int, ...]
    output_dim: int


def _read_indices(block: tirx.SBlock) -> list[list[tirx.Expr]]:
    """Index expressions of every point read of the block, the accumulator excluded."""
    out = block.writes[0].source
    return [[r.min for r in read.region] for read in block.reads if not read.source.same_as(out)]


def _invariant_in_tile(indices: list[list[tirx.Expr]], var: tirx.Var, tile: int) -> bool:
    """True when only the innermost index of each read may change inside aligned tiles of ``var``.

    Then every read is a vector (contiguous or strided) or a broadcast across the lanes. Grouped
    convolutions read data channel ``v // per_group * per_group + rc``: a tile of output channels
    inside one group broadcasts the same element to every lane; a wider tile would need a gather.
    """
    outer, inner = tirx.Var("v_o", var.ty), tirx.Var("v_i", var.ty)
    analyzer = sym.Analyzer()
    analyzer.bind(inner, tvm.ir.Range(0, tile))
    analyzer.bind(var, outer * tile + inner)
    return not any(_uses(analyzer.simplify(index), inner) for point in indices for index in point[:-1])


def _unit_stride(indices: list[list[tirx.Expr]], var: tirx.Var) -> bool:
    """True when every innermost index moves by 0 or 1 element per step of ``var`` (no gathers)."""
    base = tirx.Var("base", var.ty)
    for point in indices:
        if point:
            step = sym.Analyzer().simplify(_at(point[-1], var, base + 1) - _at(point[-1], var, base))
            if not (isinstance(step, tirx.IntImm) and int(step) in (0, 1)):
                return False
    return True


def _at(expr: tirx.Expr, var: tirx.Var, value: tirx.Expr) -> tirx.Expr:
    """``expr`` with ``var`` replaced by ``value`` (the analyzer substitutes bound variables)."""
    analyzer = sym.Analyzer()
    analyzer.bind(var, value)
    return analyzer.simplify(expr)


def plan_contraction(sch: s_tir.Schedule, main: SBlockInfo, lanes: int) -> ContractionPlan | None:
    """Choose the vector axis and the tiles, or None when the block is not a vectorizable contraction.

    Candidates are the spatial axes that some read indexes innermost: the output channel of an
    HWIO conv kernel or a transposed linear weight (one contiguous vector per weight row), or the
    output width of a depthwise conv or pooling (a vector of neighbouring inputs). The widest lawful
    vector wins, contiguous before strided.
    """
    block = sch.get(main.block_rv)
    kinds = main.dom_kind()
    n_spatial = len(kinds) - len(kinds.lstrip("S"))
    if n_spatial == 0 or set(kinds[n_spatial:]) != {"R"} or len(block.writes) != 1:
        return None
    spatial = [it.var for it in main.iters[:n_spatial]]
    extents = [it.dom for it in main.iters[:n_spatial]]
    if not all(isinstance(e, (int, tirx.IntImm)) for e in extents):
        return None
    extents = [int(e) for e in extents]
    written = [r.min for r in block.writes[0].region if not isinstance(r.min, tirx.IntImm)]
    if len(written) != n_spatial or not all(w.same_as(v) for w, v in zip(written, spatial)):
        return None
    reads = _read_indices(block)
    best: tuple[tuple[bool, bool, int], int] | None = None
    for axis, var in enumerate(spatial):
        if not any(point and _uses(point[-1], var) for point in reads):
            continue
        tile = _vector_tile(reads, var, extents[axis], lanes)
        key = (tile >= lanes, _unit_stride(reads, var), tile)
        if tile > 1 and (best is None or key > best[0]):
            best = (key, axis)
    if best is None:
        return None
    axis = best[1]
    tiles = [1] * n_spatial
    tiles[axis] = best[0][2]
    budget = REGISTER_TILE
    for i in reversed(range(n_spatial)):
        if i != axis and budget > 1:
            tiles[i] = largest_divisor(extents[i], budget)
            budget //= tiles[i]
    # Positions the other axes leave unused become more vectors (a GEMV has no other axis): enough
    # independent accumulators to hide the FMA latency.
    wider = tiles[axis] * largest_divisor(extents[axis] // tiles[axis], budget)
    if _invariant_in_tile(reads, spatial[axis], wider):
        tiles[axis] = wider
    output_dim = next(i for i, r in enumerate(block.writes[0].region) if r.min.same_as(spatial[axis]))
    return ContractionPlan(axis, tuple(tiles), output_dim)


def _uses(expr: tirx.Expr, var: tirx.Var) -> bool:
    return any(v.same_as(var) for v in undefined_vars(expr))


def _vector_tile(reads: list[list[tirx.Expr]], var: tirx.Var, length: int, lanes: int) -> int:
    """Two vectors if they fit the axis and its groups, else one, else the largest lawful divisor."""
    fits = [t for t in range(1, min(length, 2 * lanes) + 1)
            if length % t == 0 and _invariant_in_tile(reads, var, t)]
    for preferred in (2 * lanes, lanes):
        if preferred in fits:
            return preferred
    return max(fits) if fits else 1


class Contraction(CPURule):
    """dlight rule: one reduction block with only spatial blocks before (padding) and after (epilogue)."""

    def schedule(self, sch: s_tir.Schedule, infos: list[SBlockInfo], lanes: int) -> bool:
        reductions = [i for i, info in enumerate(infos) if not is_spatial(sch, info)]
        if len(reductions) != 1:
            return False
        main = infos[reductions[0]]
        plan = plan_contraction(sch, main, lanes)
        if plan is None:
            return False
        epilogue = infos[reductions[0] + 1:]
        for info in epilogue[:-1]:
            sch.compute_inline(info.block_rv)
        tiled = math.prod(_extents(main)[:len(plan.tiles)])
        fused = bool(epilogue) and math.prod(_extents(epilogue[-1])) == tiled
        _tile_main(sch, main, plan, epilogue[-1].block_rv if fused else None)
        for info in infos[:reductions[0]] + ([] if fused else epilogue[-1:]):
            schedule_injective(sch, info.block_rv, lanes)
        return True


def _extents(info: SBlockInfo) -> list[int]:
    return [int(d) for d in info.dom()]


def _tile_main(sch: s_tir.Schedule, main: SBlockInfo, plan: ContractionPlan,
               epilogue: s_tir.schedule.SBlockRV | None) -> None:
    """Tile, cache the accumulators locally (vector axis innermost), apply the epilogue per tile.

    ``epilogue`` is the (already inlined) elementwise chain over the same points as the main block,
    or None: then the tile is just written back, and an epilogue that broadcasts the result over a
    larger tensor (squeeze-excitation's ``x * sigmoid(fc(pool(x)))``) runs afterwards on its own.
    """
    block = main.block_rv
    loops = sch.get_loops(block)
    n_spatial = len(plan.tiles)
    outer, inner = [], []
    for i, (loop, tile) in enumerate(zip(loops[:n_spatial], plan.tiles)):
        if tile == 1:
            outer.append(loop)
            continue
        o, t = sch.split(loop, factors=[None, tile])
        outer.append(o)
        if i != plan.vector_axis:
            inner.append(t)
        else:
            vector = t
    reduction = loops[n_spatial:]
    sch.reorder(*outer, *reduction, *inner, vector)

    writeback = sch.cache_write(block, 0, "local")
    ndim = len(sch.get(block).writes[0].region)
    order = [i for i in range(ndim) if i != plan.output_dim] + [plan.output_dim]
    sch.transform_layout(block, ("write", 0), lambda *idx: [idx[i] for i in order])
    final = writeback
    if epilogue is not None:
        sch.compute_inline(writeback)
        final = epilogue

    tile_loop = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    if math.prod(_extents(main)) >= MIN_PARALLEL_POINTS:
        sch.parallel(tile_loop)
    sch.reverse_compute_at(final, tile_loop, preserve_unit_loops=True)
    for loop in inner:
        sch.unroll(loop)
    sch.vectorize(vector)
    sch.decompose_reduction(block, reduction[0])
    _unroll_epilogue(sch, final, plan.output_dim)


def _unroll_epilogue(sch: s_tir.Schedule, final: s_tir.schedule.SBlockRV, vector_dim: int) -> None:
    """Read the accumulators only at constant offsets, one vector per position of the tile.

    LLVM keeps the local accumulator array in registers only if every access has a constant
    offset, so the epilogue's loops over the tile are unrolled; the loop over the vector axis
    (found through the output index at ``vector_dim``) becomes the innermost one and is
    vectorized, which keeps the unrolled body (and compile time) small.
    """
    loops = sch.get_loops(final)[1:]
    block = sch.get(final)
    index = block.writes[0].region[vector_dim].min if vector_dim < len(block.writes[0].region) else None
    axis = next((k for k, iv in enumerate(block.iter_vars) if index is not None and iv.var.same_as(index)), None)
    if axis is not None and len(loops) == len(block.iter_vars):
        vector = loops[axis]
        loops = [loop for k, loop in enumerate(loops) if k != axis]
        sch.reorder(*loops, vector)
        sch.vectorize(vector)
    for loop in loops:
        sch.unroll(loop)
