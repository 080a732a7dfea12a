"""Epilogues: the ops that follow a layer (bias, BatchNorm, residual add, ReLU/ReLU6), applied to each
output value in registers at its store, so the output makes one trip through memory instead of one per
op (``passes/fuse_epilogue.py`` finds them). Their operands are extra kernel parameters between the
inputs and the output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import tvm
from tvm import tirx
from tvm.script import tirx as T

# An epilogue step's TIR form: (parameters, buffer declarations, value -> value at (row, index)).
BoundStep = tuple[list[tirx.Buffer], list[tirx.Stmt], Callable]


@dataclass(frozen=True, eq=False)
class Affine:
    """``y * scale + shift`` per output channel: bias, BatchNorm, and any chain of those folded into one
    FMA (``fold_epilogue``). None stands for 1 (scale) or 0 (shift), so a plain bias costs one add."""

    scale: np.ndarray | None = None  # (out_channels,), float32 once folded
    shift: np.ndarray | None = None

    def operands(self) -> list[np.ndarray]:
        return [a for a in (self.scale, self.shift) if a is not None]

    def describe(self) -> str:
        return "affine" if self.scale is not None and self.shift is not None else (
            "scale" if self.scale is not None else "shift")

    def bind(self, name: str, channels: int, _y_shape, _y_view) -> BoundStep:
        scale = None if self.scale is None else tirx.decl_buffer((channels,), "float32", f"{name}_scale")
        shift = None if self.shift is None else tirx.decl_buffer((channels,), "float32", f"{name}_shift")

        def apply(value, row, _index):
            value = value if scale is None else value * scale[row]
            return value if shift is None else value + shift[row]

        return [b for b in (scale, shift) if b is not None], [], apply


@dataclass(frozen=True, eq=False)
class AddTensor:
    """``y + t`` with ``t`` an extra input of the output's shape, read at the store's index: a residual
    add, or another kernel's partial sum (the free blocks). ``operand`` is opaque here: what the caller
    passes for it (a Relax expression in ``FuseUnifiedEpilogue``)."""

    operand: object = None

    def operands(self) -> list[object]:
        return [self.operand]

    def describe(self) -> str:
        return "add"

    def bind(self, name: str, _channels: int, y_shape, y_view) -> BoundStep:
        param = tirx.decl_buffer(y_shape, "float32", name)
        view = tirx.decl_buffer(y_view, "float32", f"{name}_view", data=tirx.buffer_data(param))
        return [param], [tirx.DeclBuffer(view, data=tirx.buffer_data(param))], lambda value, _row, index: (
            value + view[index])


@dataclass(frozen=True)
class Clip:
    """``min(max(y, lo), hi)`` (None: unbounded): ReLU is ``Clip(0.0)``, ReLU6 ``Clip(0.0, 6.0)``."""

    lo: float | None = None
    hi: float | None = None

    def operands(self) -> list[object]:
        return []

    def describe(self) -> str:
        return "relu" if (self.lo, self.hi) == (0.0, None) else f"clip({self.lo},{self.hi})"

    def bind(self, _name: str, _channels: int, _y_shape, _y_view) -> BoundStep:
        def apply(value, _row, _index):
            value = value if self.lo is None else T.max(value, T.float32(self.lo))
            return value if self.hi is None else T.min(value, T.float32(self.hi))

        return [], [], apply


Step = Affine | AddTensor | Clip


def fold_epilogue(steps: Sequence[Step]) -> tuple[Step, ...]:
    """Merge consecutive ``Affine`` steps into one, so that e.g. conv bias + BatchNorm's subtract, divide,
    multiply and add cost one FMA per output value. Composed in float64 and rounded to the kernel's
    float32 once, here."""
    folded: list[Step] = []
    for step in steps:
        if isinstance(step, Affine) and folded and isinstance(folded[-1], Affine):
            folded[-1] = _compose(folded[-1], step)
        else:
            folded.append(step)
    return tuple(Affine(*(None if a is None else np.asarray(a, dtype=np.float32) for a in (s.scale, s.shift)))
                 if isinstance(s, Affine) else s for s in folded)


def _compose(first: Affine, then: Affine) -> Affine:
    """``then(first(y))``: scale ``s1 * s2``, shift ``b1 * s2 + b2``."""
    scale = None
    if first.scale is not None or then.scale is not None:
        scale = np.float64(1) if first.scale is None else first.scale.astype(np.float64)
        scale = scale if then.scale is None else scale * then.scale
    shift = None if first.shift is None else first.shift.astype(np.float64)
    if shift is not None and then.scale is not None:
        shift = shift * then.scale
    if then.shift is not None:
        shift = then.shift.astype(np.float64) if shift is None else shift + then.shift
    return Affine(scale, shift)


def bind_epilogue(steps: Sequence[Step], channels: int, y_shape, y_view) -> BoundStep:
    """All steps' parameters and declarations, in step order, and their composition."""
    bound = [step.bind(f"epilogue{n}", channels, y_shape, y_view) for n, step in enumerate(steps)]

    def apply(value, row, index):
        for _, _, step in bound:
            value = step(value, row, index)
        return value

    return [p for b in bound for p in b[0]], [d for b in bound for d in b[1]], apply


def with_params(kernel: tvm.tirx.PrimFunc, params: list[tirx.Buffer], decls: list[tirx.Stmt]
                 ) -> tvm.tirx.PrimFunc:
    """Insert the epilogue's parameters before the output (the body already reads them) and declare
    their views first; then check what the parser could not (it saw the parameters as free buffers)."""
    if not params:
        tvm.tirx.analysis.verify_well_formed(kernel)
        return kernel
    body = list(kernel.body.seq) if isinstance(kernel.body, tirx.SeqStmt) else [kernel.body]
    stmts = [*decls, *body]
    func = tirx.PrimFunc([*kernel.params[:-1], *params, kernel.params[-1]],
                         stmts[0] if len(stmts) == 1 else tirx.SeqStmt(stmts),
                         kernel.ret_type, kernel.attrs)
    tvm.tirx.analysis.verify_well_formed(func)
    return func
