"""Planar convs: a direct conv2d over whole input planes, as a hand-scheduled CPU kernel, for the dense
convs unification leaves behind whose im2col GEMM has almost no reduction to vectorize over: depthwise
convs (one input plane per output channel) and convs with very few input channels (the RGB stem).

At ImageNet size these dominate an inverted-residual net: TVM's legalized loop nest, even register-tiled
by the default rule (``schedule/contraction.py``), pads the whole input in a separate pass and, at
stride 2, reads every vector as a strided gather. Measured on MobileNetV2-224 (AMD EPYC, 2 threads)
the dense depthwise layers took 11 ms of an 18 ms unified inference; this kernel runs them 1.2-11x
faster (the 112x112 stride-2 layer 4.5 -> 0.4 ms).

Each input plane is copied once into a zero-bordered scratch plane, split into ``stride`` column
phases (column ``j`` of phase ``q`` holds padded column ``stride * j + q``), so that every tap of every
output row is a contiguous vector load whatever the stride. A depthwise conv copies its channel's plane
inside the channel's parallel task (nothing else reads it); a conv with few input channels stages all
of them first, then each parallel task computes output rows of every channel, reading the same few
input rows. Output rows are accumulated in registers, ``rows`` at a time: ``taps`` broadcast weights
times row vectors of ``lanes`` outputs (each weight is broadcast once for the step's rows, and their
input rows overlap, so they stay in L1). These two are the kernel's knobs (``PlanarConv``), which
tuning searches (``tuning/planar_space.py``). A row whose width is not a multiple of the vector is
covered by overlapping vectors (the last one ends at the row's end), and likewise the last step of rows
overlaps its neighbour, so no lane is ever masked, nor any loop tail generated. The epilogue
(BatchNorm, ReLU6...) is applied at the store like the unified kernels' (``epilogue.py``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from typing import Sequence

import tvm
from tvm.script import tirx as T

from .common import Conv2dGeometry, tile_lanes
from .epilogue import Step, bind_epilogue, with_params
from .recipe import RECIPE_ATTR, geometry_of

OP = "planar_conv2d"
# Narrower output rows leave most of a vector idle: the default rule's register tiles (which vectorize
# several rows, or output channels) serve them better.
MIN_OUTPUT_WIDTH = 4
# A conv with up to this many input channels (and groups=1) is planar: every output channel reads
# every input plane, and ``in_channels * kh * kw`` taps are unrolled per output row.
MAX_SHARED_PLANES = 4
# Column strides the staging splits into phases (``stage`` writes phases 0 and 1): MobileNet-style nets
# use 1 and 2; a wider stride would leave a phase unwritten.
MAX_COLUMN_STRIDE = 2
# Output rows per step of an untuned kernel: ``ROWS`` where their accumulators (rows x vectors x lanes)
# hold at most ``MAX_ACCUMULATOR_LANES`` floats (8 AVX2, 4 AVX-512 or 16 NEON registers), else 1.
# Measured on this host (AMD EPYC, AVX-512, TVM_NUM_THREADS=2): at 32x32 two rows run MobileNetV2's planar
# convs 1.09x faster in all than one (up to 1.2x on stride-1 planes 16 or 32 wide); at 224x224, two rows
# of 56-wide outputs (4 vectors of 16: 128 floats) are 1.1-1.2x slower, of 112-wide ones up to 2.5x
# slower (the stem), while the 28- and 14-wide ones still gain. Tuning searches 1, 2 and 4.
ROWS = 2
MAX_ACCUMULATOR_LANES = 64


def row_vector(width: int, lanes: int) -> tuple[int, int]:
    """``(vl, count)``: the vector width for output rows of ``width`` pixels (a power of two, at most
    ``lanes`` and ``width``) and how many vectors cover a row (the last one may overlap its neighbour)."""
    vl = tile_lanes(width, lanes)
    return vl, -(-width // vl)


def supports(g: Conv2dGeometry, groups: int) -> bool:
    """Whether a conv of geometry ``g`` and ``groups`` is planar and computed well here: depthwise
    (``groups`` = in = out channels) or groups=1 with at most ``MAX_SHARED_PLANES`` input channels; no
    dilation; a column stride of at most ``MAX_COLUMN_STRIDE``; output rows wide enough to vectorize."""
    depthwise = groups == g.in_channels == g.out_channels
    few_inputs = groups == 1 and g.in_channels <= MAX_SHARED_PLANES
    return ((depthwise or few_inputs) and g.dilation == (1, 1) and g.stride[1] <= MAX_COLUMN_STRIDE
            and g.out_hw[1] >= MIN_OUTPUT_WIDTH)


def default_rows(g: Conv2dGeometry, lanes: int) -> int:
    """Output rows per step of the untuned kernel (``ROWS``, or 1 where their accumulators would hold
    more than ``MAX_ACCUMULATOR_LANES`` floats)."""
    oh, ow = g.out_hw
    vl, vectors = row_vector(ow, lanes)
    return min(ROWS, oh) if ROWS * vectors * vl <= MAX_ACCUMULATOR_LANES else 1


@dataclass(frozen=True)
class PlanarConv:
    """One planar conv kernel: its geometry and ``groups`` (the workload) and its knobs, the vector
    ``lanes`` of an output row and the output ``rows`` computed per step (``untuned`` picks both)."""

    geometry: Conv2dGeometry
    groups: int
    lanes: int
    rows: int

    @classmethod
    def untuned(cls, g: Conv2dGeometry, groups: int, lanes: int) -> PlanarConv:
        """The default kernel for a target of ``lanes``-wide vectors."""
        return cls(g, groups, row_vector(g.out_hw[1], lanes)[0], default_rows(g, lanes))

    @property
    def key(self) -> str:
        """The workload (what tuning records are keyed by): op, geometry and groups, not the knobs."""
        text = json.dumps([OP, asdict(self.geometry), self.groups], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def describe(self) -> str:
        """E.g. ``depthwise 3x3/2 conv2d 144->144 @32x32``."""
        g = self.geometry
        kind = "depthwise" if self.groups == g.in_channels == g.out_channels else f"groups={self.groups}"
        return (f"{kind} conv2d {g.in_channels}->{g.out_channels} {g.kernel[0]}x{g.kernel[1]}/{g.stride[0]} "
                f"@{g.height}x{g.width}")

    def with_knobs(self, lanes: int, rows: int) -> PlanarConv:
        """The same workload with other knobs, clamped to what the kernel really uses (the vector fits
        an output row, the step fits the output's height), so equal kernels compare equal."""
        oh, ow = self.geometry.out_hw
        return replace(self, lanes=row_vector(ow, lanes)[0], rows=min(rows, oh))

    def kernel(self, epilogue: Sequence[Step] = ()) -> tvm.tirx.PrimFunc:
        return planar_conv2d(self.geometry, self.groups, self.lanes, epilogue, self.rows)


def planar_conv2d(g: Conv2dGeometry, groups: int, lanes: int, epilogue: Sequence[Step] = (),
                  rows: int = 1) -> tvm.tirx.PrimFunc:
    """The PrimFunc ``(x, w, *epilogue operands, y)`` of a planar conv of geometry ``g`` and ``groups``
    (``supports``) with weights ``w`` of shape ``[out_channels, planes * kh * kw]``, where ``planes`` =
    ``in_channels / groups`` are the input planes each output channel reads; ``lanes`` and ``rows`` are
    its knobs (``PlanarConv``)."""
    n, c_in, h, w, c_out = g.batch, g.in_channels, g.height, g.width, g.out_channels
    (kh, kw), (sh, sw) = g.kernel, g.stride
    pt, pl, pb, pr = g.padding
    oh, ow = g.out_hw
    padded_rows, phase_cols = h + pt + pb, -(-(w + pl + pr) // sw)
    planes, per_group = c_in // groups, c_out // groups
    private = groups == c_in == c_out  # depthwise: each plane has one reader, which stages it
    vl, vectors = row_vector(ow, lanes)
    rs = min(rows, oh)  # output rows per step
    steps = -(-oh // rs)
    y_shape = (n, c_out, oh, ow)
    params, decls, finish = bind_epilogue(epilogue, c_out, y_shape, y_shape)

    # per phase q: its columns j hold padded column sw * j + q, input column sw * j + q - pl; those in
    # the input are j = first[q] .. first[q] + count[q] - 1, the others are zero borders
    first = [max(0, -(-(pl - q) // sw)) for q in range(sw)]
    count = [(w - 1 + pl - q) // sw - first[q] + 1 for q in range(sw)]

    @T.macro
    def stage_phase(x, scratch, plane, image, channel, q, first_col, cols):
        """Phase ``q`` of ``scratch[plane]``: border rows and columns zeroed, the input copied in."""
        for r in range(padded_rows):
            if r < pt or r >= pt + h:
                for j in T.vectorized(phase_cols):
                    scratch[plane, q, r, j] = T.float32(0)
            else:
                for j in range(first_col):
                    scratch[plane, q, r, j] = T.float32(0)
                for j in range(phase_cols - first_col - cols):
                    scratch[plane, q, r, first_col + cols + j] = T.float32(0)
                for j in T.vectorized(cols):
                    scratch[plane, q, r, first_col + j] = x[image, channel, r - pt, sw * (first_col + j) + q - pl]

    @T.macro
    def stage(x, scratch, plane, image, channel):
        """``scratch[plane]`` = the input plane (image, channel), zero-bordered and split into phases."""
        stage_phase(x, scratch, plane, image, channel, 0, first[0], count[0])
        if sw > 1:
            stage_phase(x, scratch, plane, image, channel, 1, first[1], count[1])

    @T.macro
    def output_row(weight, y, scratch, plane0, image, channel, step, acc):
        """``rs`` output rows from ``step * rs`` (the last step overlaps its neighbour) of plane (image,
        channel) from ``planes`` staged planes starting at ``plane0``."""
        for t in T.unroll(rs):
            for u in T.unroll(vectors):
                for v in T.vectorized(vl):
                    acc[t, u, v] = T.float32(0)
        for p in T.unroll(planes):
            for i in T.unroll(kh):
                for j in T.unroll(kw):
                    for t in T.unroll(rs):
                        for u in T.unroll(vectors):
                            for v in T.vectorized(vl):
                                acc[t, u, v] = acc[t, u, v] + weight[channel, (p * kh + i) * kw + j] * scratch[
                                    plane0 + p, j % sw, (T.min(step * rs, oh - rs) + t) * sh + i,
                                    T.min(u * vl, ow - vl) + j // sw + v]
        for t in T.unroll(rs):
            for u in T.unroll(vectors):
                for v in T.vectorized(vl):
                    y[image, channel, T.min(step * rs, oh - rs) + t, T.min(u * vl, ow - vl) + v] = finish(
                        acc[t, u, v], channel,
                        (image, channel, T.min(step * rs, oh - rs) + t, T.min(u * vl, ow - vl) + v))

    @T.prim_func(check_well_formed=False)  # the epilogue parameters are added after parsing
    def kernel(x: T.Buffer((n, c_in, h, w), "float32"), weight: T.Buffer((c_out, planes * kh * kw), "float32"),
               y: T.Buffer(y_shape, "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        if private:
            for task in T.parallel(n * c_out):
                scratch = T.decl_buffer((1, sw, padded_rows, phase_cols), "float32")
                acc = T.decl_buffer((rs, vectors, vl), "float32")
                stage(x, scratch, 0, task // c_out, task % c_out)
                for r in range(steps):
                    output_row(weight, y, scratch, 0, task // c_out, task % c_out, r, acc)
        else:
            shared = T.decl_buffer((n * c_in, sw, padded_rows, phase_cols), "float32")
            for plane in T.parallel(n * c_in):
                stage(x, shared, plane, plane // c_in, plane % c_in)
            # tasks over output rows, every output channel of a row in turn: the few input rows it reads
            # stay in L1 (tasks over channels each streamed all input planes through the cache)
            for task in T.parallel(n * steps):
                acc = T.decl_buffer((rs, vectors, vl), "float32")
                for channel in range(c_out):
                    output_row(weight, y, shared, task // steps * c_in + channel // per_group * planes,
                               task // steps, channel, task % steps, acc)

    recipe = {"op": OP, "algorithm": OP, "geometry": asdict(g), "groups": groups, "lanes": lanes, "rows": rs,
              "mode": "fp32", "ell_args": [1], "epilogue": [step.describe() for step in epilogue]}
    return with_params(kernel, params, decls).with_attr(RECIPE_ATTR, json.dumps(recipe))


def regenerate_planar(recipe: dict, epilogue: Sequence[Step]) -> tvm.tirx.PrimFunc:
    """The kernel ``recipe`` describes, with ``epilogue`` instead of its own."""
    return planar_conv2d(geometry_of(recipe), recipe["groups"], recipe["lanes"], epilogue, recipe["rows"])
