"""The search space of a unified kernel: knob combinations of its ``KernelOptions``, the features the
cost model reads, and ``UnifiedTemplate``, the layer as the knob search (``search.py``) sees it.

Unified kernels are hand-written templates (``kernels/``), not schedules meta-schedule can rewrite, so
the tuner searches their knobs instead: the algorithm (table lookups or sign-apply in fp32, the int8
variants the target has), the pixel tile (vector ``lanes``), the parallel task count of the table
lookups (``tasks``) or of the other algorithms (``row_tasks``), and the number of row-group loop nests
(``max_groups``: fewer nests, more computed pad slots). LUT bits stay fixed (they are the block width's
largest divisor up to 4: a wider table does not fit, a narrower one only adds lookups). Knobs that do
not change the generated kernel (tasks of a non-table kernel, lanes a layer's pixel count rounds to the
same tile) are folded, so every candidate is a distinct kernel.
"""

from __future__ import annotations

import math
from dataclasses import replace
from itertools import product

import numpy as np
import tvm

from ..kernels import KernelOptions, pick_lanes
from ..kernels.common import tile_lanes
from ..kernels.neon import CpuFeatures, dot_lanes
from ..kernels.unified import DOT_ALGORITHMS, UnifiedLayer, default_algorithm, tiles_overlap

LANES = (4, 8, 16, 32)
TASKS = (1, 2, 4, 8)
ROW_TASKS = (4, 8, 16, 32)
GROUPS = (1, 2, 3, 4)
FP32_RTOL = 1e-4  # max abs difference from the default kernel's output, relative to its largest value
INT8_RTOL = 1e-2  # int8 variants differ by the rounding of their rescales (sdot's row-scale grid)
Knobs = dict[str, object]  # algorithm, lanes, tasks, row_tasks, max_groups


def knobs_of(options: KernelOptions) -> Knobs:
    """The tuned fields of ``options``."""
    return {"algorithm": options.algorithm, "lanes": options.lanes, "tasks": options.tasks,
            "row_tasks": options.row_tasks, "max_groups": options.max_groups}


def options_for(layer: UnifiedLayer, knobs: Knobs) -> KernelOptions:
    """The layer's untuned options with ``knobs`` in place."""
    return replace(layer.options, **knobs)


def _group(layer: UnifiedLayer) -> int:
    """Pixels per image (a tile never spans images): what the lanes round to."""
    if layer.op == "conv2d":
        oh, ow = layer.dims.out_hw
        return oh * ow
    return layer.dims[0]


def algorithms(layer: UnifiedLayer, features: CpuFeatures) -> list[str]:
    """The algorithms that compute this layer on the target: the default, and sign-apply (``direct``)
    as the alternative (``gemv`` for a batch-1 linear keeps its own); int8 dot products only where
    ``default_algorithm`` picks them (they need the target's features)."""
    mode, columns = layer.options.mode, layer.columns
    default = default_algorithm(mode, columns, features, (layer.ell.rows, layer.ell.cols), _group(layer))
    return [default] if default == "gemv" else list(dict.fromkeys([default, "direct"]))


def normalized(layer: UnifiedLayer, knobs: Knobs) -> Knobs:
    """``knobs`` with the lanes the kernel will really use and the knobs its algorithm ignores at their
    defaults, so equal kernels compare equal."""
    algorithm = knobs["algorithm"]
    # as the kernel plans its tiles (``gemm.plan_gemm``): overlapping, the widest vector that fits an
    # image; the int8 dot products a power of two that divides it and fits their registers
    if tiles_overlap(algorithm):
        lanes = tile_lanes(_group(layer), int(knobs["lanes"]))
    else:
        lanes = dot_lanes(layer.ell.rows, pick_lanes(_group(layer), int(knobs["lanes"])))
    base = layer.options
    return {"algorithm": algorithm, "lanes": lanes,
            "tasks": knobs["tasks"] if algorithm == "lut" else base.tasks,
            "row_tasks": base.row_tasks if algorithm == "lut" else knobs["row_tasks"],
            "max_groups": min(int(knobs["max_groups"]), len(_groups(layer, len(GROUPS))))}


def _groups(layer: UnifiedLayer, max_groups: int):
    return layer.ell.with_max_groups(max_groups).groups


def candidates(layer: UnifiedLayer, features: CpuFeatures, parallel: bool = True) -> list[Knobs]:
    """Every distinct knob combination for ``layer``, the untuned one first. Without ``parallel`` the
    task counts stay at their defaults: a cost that sums the work of all threads (instruction counts)
    cannot see what more tasks gain, only what they cost."""
    base = layer.options
    tasks_space, row_space = (TASKS, ROW_TASKS) if parallel else ((base.tasks,), (base.row_tasks,))
    seen = [normalized(layer, knobs_of(base))]
    for algorithm, lanes, tasks, row_tasks, groups in product(algorithms(layer, features), LANES, tasks_space,
                                                              row_space, GROUPS):
        knobs = normalized(layer, {"algorithm": algorithm, "lanes": lanes, "tasks": tasks, "row_tasks": row_tasks,
                                   "max_groups": groups})
        if knobs not in seen:
            seen.append(knobs)
    return seen


def features(layer: UnifiedLayer, knobs: Knobs) -> list[float]:
    """What the cost model sees of one candidate: the layer's GEMM shape and block pattern (so what it
    learns transfers between layers) and the knobs, with what they imply (tiles, tasks, pad slots)."""
    ell, algorithm, conv = layer.ell, knobs["algorithm"], layer.op == "conv2d"
    taps = math.prod(layer.dims.kernel) if conv else 1
    stride = layer.dims.stride[0] if conv else 1
    rows, k = ell.scales.shape[0] * ell.rows, layer.dims.in_channels * taps if conv else layer.dims[1]
    columns, lanes = layer.columns, int(knobs["lanes"])
    tiles = max(-(-columns // lanes), 1)  # the last tile of an image may overlap its neighbour
    tasks = int(knobs["tasks"] if algorithm == "lut" else knobs["row_tasks"])
    grouped = ell.with_max_groups(int(knobs["max_groups"]))
    slots = sum(g.size * g.width for g in grouped.groups)
    return [math.log2(rows), math.log2(k), math.log2(columns), taps, stride, float(ell.counts.mean()),
            float(ell.counts.sum()) / max(slots, 1), ell.rows, ell.cols,
            float(algorithm == "lut"), float(algorithm == "direct"), float(algorithm in DOT_ALGORITHMS),
            math.log2(lanes), math.log2(tiles), math.log2(tasks), math.log2(max(tiles, tasks)),
            float(len(grouped.groups)), math.log2(max(slots, 1))]


class UnifiedTemplate:
    """A unified layer as a template of the knob search (``search.Template``): one workload per layer,
    keyed by its block pattern too."""

    kind = "unified"
    calls = 1  # each layer is its own workload

    def __init__(self, layer: UnifiedLayer) -> None:
        self.layer = layer
        self.key, self.shape_key, self.name, self.op = layer.key, layer.shape_key, layer.name, layer.op

    @property
    def tolerance(self) -> float:
        """The int8 kernels agree within int8 rounding of the rescale, not bit for bit."""
        return FP32_RTOL if self.layer.options.mode == "fp32" else INT8_RTOL

    @property
    def cost(self) -> float:
        """Multiply-adds x 2 the layer's kept blocks compute."""
        ell = self.layer.ell
        return 2.0 * float(ell.counts.sum()) * ell.rows * ell.cols * self.layer.columns

    def describe(self) -> str:
        """One line of shapes for the records and the table, e.g. ``conv2d 64->128 3x3/2 @16x16, 4x4 blocks``."""
        layer = self.layer
        block = f"{layer.ell.rows}x{layer.ell.cols} blocks, {layer.options.mode}"
        if layer.op == "conv2d":
            g = layer.dims
            return (f"conv2d {g.in_channels}->{g.out_channels} {g.kernel[0]}x{g.kernel[1]}/{g.stride[0]} "
                    f"@{g.height}x{g.width}, {block}")
        batch, k, n = layer.dims
        return f"linear {k}->{n} x{batch}, {block}"

    def x_shape(self) -> tuple[int, ...]:
        if self.layer.op == "conv2d":
            return self.layer.dims.input_shape
        return (self.layer.dims[0], self.layer.dims[1])

    def default_knobs(self) -> Knobs:
        return normalized(self.layer, knobs_of(self.layer.options))

    def candidates(self, cpu: CpuFeatures, parallel: bool) -> list[Knobs]:
        return candidates(self.layer, cpu, parallel)

    def features(self, knobs: Knobs) -> list[float]:
        return features(self.layer, knobs)

    def kernel(self, knobs: Knobs) -> tuple[tvm.tirx.PrimFunc, tuple[np.ndarray, ...]]:
        func, weight = self.layer.kernel(options_for(self.layer, knobs))
        return func, weight.arrays
