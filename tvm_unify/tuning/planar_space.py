"""The search space of a planar conv kernel (``kernels/planar.py``): its vector ``lanes`` and the
output ``rows`` per step, as ``PlanarTemplate`` for the knob search (``search.py``).

Planar kernels are hand-written like the unified ones, so meta-schedule cannot rewrite them; in an
inverted-residual net they are the depthwise convs, a third of a unified MobileNetV2's time at 32x32.
A workload is the conv's geometry and groups (its weights do not change the kernel: the candidates are
measured on fixed random weights), shared by every layer of that geometry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product

import numpy as np
import tvm

from ..kernels.neon import CpuFeatures
from ..kernels.planar import OP, PlanarConv, row_vector
from .space import FP32_RTOL, Knobs

LANES = (4, 8, 16, 32)
ROWS = (1, 2, 4)
SEED = 0


@dataclass(frozen=True)
class PlanarTemplate:
    """A planar conv kernel as a template of the knob search (``search.Template``); ``calls``: how many
    layers of the model run it."""

    conv: PlanarConv
    calls: int = 1
    kind = OP
    op = OP
    tolerance = FP32_RTOL

    @property
    def key(self) -> str:
        return self.conv.key

    @property
    def shape_key(self) -> str:
        return self.conv.key

    @property
    def name(self) -> str:
        return f"planar x{self.calls}"

    @property
    def cost(self) -> float:
        """Multiply-adds x 2 of all its calls."""
        g = self.conv.geometry
        oh, ow = g.out_hw
        planes = g.in_channels // self.conv.groups
        return 2.0 * self.calls * g.batch * g.out_channels * oh * ow * planes * math.prod(g.kernel)

    def describe(self) -> str:
        return self.conv.describe()

    def x_shape(self) -> tuple[int, ...]:
        return self.conv.geometry.input_shape

    def default_knobs(self) -> Knobs:
        return {"lanes": self.conv.lanes, "rows": self.conv.rows}

    def candidates(self, cpu: CpuFeatures, parallel: bool) -> list[Knobs]:
        """Every distinct (lanes, rows), the untuned one first; no knob is a task count, so ``cpu`` and
        ``parallel`` do not narrow the space."""
        seen = [self.default_knobs()]
        for lanes, rows in product(LANES, ROWS):
            conv = self.conv.with_knobs(lanes, rows)
            knobs = {"lanes": conv.lanes, "rows": conv.rows}
            if knobs not in seen:
                seen.append(knobs)
        return seen

    def features(self, knobs: Knobs) -> list[float]:
        """The geometry and the knobs, with the register tile they make (vectors x rows accumulators)."""
        g = self.conv.geometry
        oh, ow = g.out_hw
        vl, vectors = row_vector(ow, int(knobs["lanes"]))
        rows = int(knobs["rows"])
        return [math.log2(g.in_channels), math.log2(oh), math.log2(ow), g.kernel[0], g.stride[0],
                float(self.conv.groups == g.in_channels), math.log2(vl), vectors, rows, vectors * rows,
                -(-oh // rows)]

    def kernel(self, knobs: Knobs) -> tuple[tvm.tirx.PrimFunc, tuple[np.ndarray, ...]]:
        conv = self.conv.with_knobs(int(knobs["lanes"]), int(knobs["rows"]))
        g = conv.geometry
        taps = g.in_channels // conv.groups * math.prod(g.kernel)
        weight = np.random.default_rng(SEED).standard_normal((g.out_channels, taps)).astype("float32")
        return conv.kernel(), (weight,)
