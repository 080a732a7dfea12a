"""Depthwise conv2d (NCHW, one filter per channel) as a hand-scheduled CPU kernel.

Unification leaves depthwise convs dense (a 3x3 filter per channel has no output x input block to
share), and at ImageNet size they dominate an inverted-residual net: TVM's legalized loop nest, even
register-tiled by the default rule (``schedule/contraction.py``), pads the whole input in a separate
pass and, at stride 2, reads every vector as a strided gather. Measured on MobileNetV2-224 (AMD EPYC,
2 threads) the dense depthwise layers took 11 ms of an 18 ms unified inference; this kernel runs them
1.2-11x faster (the 112x112 stride-2 layer 4.5 -> 0.4 ms).

Per channel (one parallel task), the input plane is copied once into a small zero-bordered scratch
plane, split into ``stride`` column phases (column ``j`` of phase ``q`` holds padded column
``stride * j + q``), so that every tap of every output row is a contiguous vector load whatever the
stride. Each output row is then accumulated in registers: ``kh * kw`` broadcast weights times row
vectors of ``lanes`` outputs. A row whose width is not a multiple of the vector is covered by
overlapping vectors (the last one ends at the row's end), so no lane is ever masked, and the epilogue
(BatchNorm, ReLU6...) is applied at the store like the unified kernels' (``epilogue.py``).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Sequence

import tvm
from tvm.script import tirx as T

from .common import Conv2dGeometry
from .epilogue import Step, bind_epilogue, with_params
from .recipe import RECIPE_ATTR, geometry_of

OP = "depthwise_conv2d"
# Narrower output rows leave most of a vector idle: the default rule's register tiles (which vectorize
# several rows, or several channels for a 1x1 plane) serve them better.
MIN_OUTPUT_WIDTH = 8


def row_vector(width: int, lanes: int) -> tuple[int, int]:
    """``(vl, count)``: the vector width for output rows of ``width`` pixels (a power of two, at most
    ``lanes`` and ``width``) and how many vectors cover a row (the last one may overlap its neighbour)."""
    vl = 1
    while vl * 2 <= min(width, lanes):
        vl *= 2
    return vl, -(-width // vl)


def supports(g: Conv2dGeometry) -> bool:
    """Whether ``g`` (channels = groups) is a conv this kernel computes well: no dilation, rows wide
    enough to vectorize."""
    return g.dilation == (1, 1) and g.out_hw[1] >= MIN_OUTPUT_WIDTH


def depthwise_conv2d(g: Conv2dGeometry, lanes: int, epilogue: Sequence[Step] = ()) -> tvm.tirx.PrimFunc:
    """The PrimFunc ``(x, w, *epilogue operands, y)`` of a depthwise conv of geometry ``g`` (``in_channels``
    = ``out_channels`` = groups) with weights ``w`` of shape ``[channels, kh * kw]``."""
    n, c, h, w = g.batch, g.in_channels, g.height, g.width
    (kh, kw), (sh, sw) = g.kernel, g.stride
    pt, pl, pb, pr = g.padding
    oh, ow = g.out_hw
    rows, phase_cols = h + pt + pb, -(-(w + pl + pr) // sw)
    vl, vectors = row_vector(ow, lanes)
    y_shape = (n, c, oh, ow)
    params, decls, finish = bind_epilogue(epilogue, c, y_shape, y_shape)

    @T.prim_func(check_well_formed=False)  # the epilogue parameters are added after parsing
    def kernel(x: T.Buffer((n, c, h, w), "float32"), weight: T.Buffer((c, kh * kw), "float32"),
               y: T.Buffer(y_shape, "float32")):
        T.func_attr({"tir.noalias": True, "tirx.is_scheduled": True})
        for task in T.parallel(n * c):
            plane = T.decl_buffer((sw, rows, phase_cols), "float32")
            acc = T.decl_buffer((vectors, vl), "float32")
            for q in T.unroll(sw):
                for r in range(rows):
                    for j in T.vectorized(phase_cols):
                        plane[q, r, j] = T.float32(0)
            for r in range(h):
                for q in T.unroll(sw):
                    # phase q's columns j hold input column sw * j + q - pl: those inside the input
                    for j in range((w - 1 + pl - q) // sw - T.max(0, (pl - q + sw - 1) // sw) + 1):
                        plane[q, r + pt, T.max(0, (pl - q + sw - 1) // sw) + j] = x[
                            task // c, task % c, r, sw * (T.max(0, (pl - q + sw - 1) // sw) + j) + q - pl]
            for r in range(oh):
                for u in T.unroll(vectors):
                    for v in T.vectorized(vl):
                        acc[u, v] = T.float32(0)
                for i in T.unroll(kh):
                    for j in T.unroll(kw):
                        for u in T.unroll(vectors):
                            for v in T.vectorized(vl):
                                acc[u, v] = acc[u, v] + weight[task % c, i * kw + j] * plane[
                                    j % sw, r * sh + i, T.min(u * vl, ow - vl) + j // sw + v]
                for u in T.unroll(vectors):
                    for v in T.vectorized(vl):
                        y[task // c, task % c, r, T.min(u * vl, ow - vl) + v] = finish(
                            acc[u, v], task % c, (task // c, task % c, r, T.min(u * vl, ow - vl) + v))

    recipe = {"op": OP, "algorithm": OP, "geometry": asdict(g), "lanes": lanes, "mode": "fp32", "ell_args": [1],
              "epilogue": [step.describe() for step in epilogue]}
    return with_params(kernel, params, decls).with_attr(RECIPE_ATTR, json.dumps(recipe))


def regenerate_depthwise(recipe: dict, epilogue: Sequence[Step]) -> tvm.tirx.PrimFunc:
    """The kernel ``recipe`` describes, with ``epilogue`` instead of its own."""
    return depthwise_conv2d(geometry_of(recipe), recipe["lanes"], epilogue)
