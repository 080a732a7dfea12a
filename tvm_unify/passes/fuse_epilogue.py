"""``FuseUnifiedEpilogue``: fold the elementwise ops after a unified kernel (conv/linear bias, decomposed
BatchNorm, residual add, ReLU, ReLU6) into the kernel's store, so its output makes one trip through
memory instead of one per op.

Why our own fusion: the unified kernels are hand-scheduled and kept opaque to FuseOps
(``passes/keep_scheduled_opaque.py``), and FuseTIR could only append the epilogue as a second loop nest over the
output in memory. Instead the kernel (CPU or OpenCL: ``unified.regenerate``, ``gpu.regenerate_gpu``) is
regenerated from its recipe (``kernels/recipe.py``) with the epilogue applied in registers.

Matched, inside one dataflow block: a ``call_tir`` to a unified kernel, then a chain of bindings each of
which is the only use of the previous value (a value used twice, or outside the block, ends the chain
there) and is one of

- add / subtract / multiply / divide by a float32 constant that varies at most along the output channel
  (``[1, C, 1, 1]`` or ``[C, 1, 1]`` for a conv, ``[C]`` or ``[1, C]`` for a linear, or a scalar; the
  constant may be either operand, except as a divisor's dividend);
- add of a non-constant tensor of the output's type (a residual, or the free-block kernel's output);
- relu, relu6, clip.

Anything else, or a binding whose type differs from the kernel's output, ends the chain. The chain
becomes one ``call_tir`` bound to its last variable at that binding's position, where every operand
(constants, residual tensors) is already defined. BatchNorm is only elementwise once
``DecomposeOpsForInference`` has run, and its constants only fold into per-channel vectors after
``FoldConstantsNumpy``, which is why the pipeline runs this pass after both.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import tvm
from tvm import relax
from tvm.ir.transform import PassContext, module_pass

from ..kernels import AddTensor, Affine, Clip, Step, fold_epilogue, recipe_of, regenerate
from ..kernels.gpu import is_gpu_recipe, regenerate_gpu
from .shapes import static_tensor_shape

CALL_TIR = tvm.ir.Op.get("relax.call_tir")
CLIPS = {"relax.nn.relu": (0.0, None), "relax.nn.relu6": (0.0, 6.0)}


@relax.expr_functor.visitor
class _UseCounter(relax.PyExprVisitor):
    """How many times each variable occurs in the visited expressions."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()

    def visit_var_(self, var: relax.Var) -> None:
        self.counts[var] += 1

    def visit_dataflow_var_(self, var: relax.DataflowVar) -> None:
        self.counts[var] += 1


def _sole_users(block: relax.DataflowBlock) -> dict[relax.Var, relax.VarBinding]:
    """Dataflow variable -> the binding that uses it, for variables used exactly once in ``block``
    (a dataflow variable is never used outside its block)."""
    users: dict[relax.Var, list[relax.VarBinding]] = defaultdict(list)
    total: Counter = Counter()
    for binding in block.bindings:
        counter = _UseCounter()
        counter.visit_expr(binding.value)
        total.update(counter.counts)
        for var in counter.counts:
            users[var].append(binding)
    return {var: uses[0] for var, uses in users.items()
            if total[var] == 1 and isinstance(var, relax.DataflowVar)}


def _per_channel(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """``value`` as one float32 per output channel (axis 1 of ``shape``), if broadcasting it against the
    output varies along no other axis; else None."""
    if value.dtype != np.float32 or value.ndim > len(shape):
        return None
    aligned = value.reshape((1,) * (len(shape) - value.ndim) + value.shape)
    if any(d != 1 for axis, d in enumerate(aligned.shape) if axis != 1) or aligned.shape[1] not in (1, shape[1]):
        return None
    return np.ascontiguousarray(np.broadcast_to(aligned.reshape(-1), (shape[1],)))


def _float(value: relax.Expr) -> float | None:
    return float(value.value) if isinstance(value, (tvm.tirx.IntImm, tvm.tirx.FloatImm)) else None


class _Chain:
    """Walks the bindings after one unified kernel call and turns each into an epilogue step."""

    def __init__(self, constants: dict[relax.Var, np.ndarray], shape: tuple[int, ...]) -> None:
        self.constants = constants
        self.shape = shape

    def constant(self, expr: relax.Expr) -> np.ndarray | None:
        if isinstance(expr, tvm.ir.GenericConst):
            return expr.value.numpy()
        return self.constants.get(expr) if isinstance(expr, relax.Var) else None

    def step(self, binding: relax.VarBinding, value: relax.Var) -> Step | None:
        """The epilogue step for ``binding`` (which uses ``value`` once), or None where fusion stops."""
        call = binding.value
        if (not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op)
                or static_tensor_shape(binding.var) != self.shape):
            return None
        name = call.op.name
        if name in CLIPS:
            return Clip(*CLIPS[name])
        if name == "relax.clip":
            lo, hi = _float(call.args[1]), _float(call.args[2])
            return None if lo is None or hi is None else Clip(lo, hi)
        if name in ("relax.add", "relax.subtract", "relax.multiply", "relax.divide"):
            first = call.args[0].same_as(value)
            return self.arithmetic(name, first, call.args[1] if first else call.args[0])
        return None

    def arithmetic(self, name: str, first: bool, other: relax.Expr) -> Step | None:
        """``value <op> other`` (``first``) or ``other <op> value`` as a step."""
        constant = self.constant(other)
        if constant is None:
            return AddTensor(other) if name == "relax.add" and static_tensor_shape(other) == self.shape else None
        vector = _per_channel(constant, self.shape)
        if vector is None:
            return None
        if name == "relax.add":
            return Affine(shift=vector)
        if name == "relax.subtract":
            return Affine(shift=-vector) if first else Affine(np.full_like(vector, -1), vector)
        if name == "relax.multiply":
            return Affine(scale=vector)
        return Affine(scale=1 / vector.astype(np.float64)) if first else None


@module_pass(opt_level=0, name="FuseUnifiedEpilogue")
class FuseUnifiedEpilogue:
    """Fuse elementwise epilogues into unified kernel calls (see the module doc).

    After the pass has run, ``fused`` lists per rewritten call the name of the kernel it called before
    (as ``LowerUnifiedBlocks`` added it; layers of equal shapes share one) and the steps now applied in
    its store, e.g. ``("unified_conv2d_fp321", ("affine", "add", "relu"))``.
    """

    def __init__(self) -> None:
        self.fused: list[tuple[str, tuple[str, ...]]] = []

    def transform_module(self, mod: tvm.IRModule, _ctx: PassContext) -> tvm.IRModule:
        self.fused = []
        builder = relax.BlockBuilder(mod)
        for gvar, func in list(mod.functions_items()):
            if isinstance(func, relax.Function) and isinstance(func.body, relax.SeqExpr):
                blocks = [self._fuse_block(mod, builder, b) if isinstance(b, relax.DataflowBlock) else b
                          for b in func.body.blocks]
                body = relax.SeqExpr(blocks, func.body.body)
                builder.update_func(gvar, relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs))
        return relax.transform.DeadCodeElimination()(builder.get()) if self.fused else mod

    def _fuse_block(self, mod: tvm.IRModule, builder: relax.BlockBuilder,
                    block: relax.DataflowBlock) -> relax.DataflowBlock:
        users = _sole_users(block)
        constants = {b.var: b.value.value.numpy() for b in block.bindings if isinstance(b.value, tvm.ir.GenericConst)}
        heads: set[relax.Var] = set()
        taken: set[relax.Var] = set()  # chain members, each fused into one kernel only
        fused: dict[relax.Var, relax.Call] = {}  # a chain's last variable -> the fused call
        for binding in block.bindings:
            recipe = self._unfused_recipe(mod, binding)
            shape = static_tensor_shape(binding.var)
            if recipe is None or shape is None:
                continue
            chain, steps = self._follow(binding, users, _Chain(constants, shape), taken)
            if steps:
                heads.add(binding.var)
                taken.update(b.var for b in chain)
                fused[chain[-1].var] = self._fused_call(builder, binding, recipe, steps)
        dropped = heads | (taken - fused.keys())
        bindings = [relax.VarBinding(b.var, fused[b.var]) if b.var in fused else b
                    for b in block.bindings if b.var not in dropped]
        return relax.DataflowBlock(bindings)

    @staticmethod
    def _unfused_recipe(mod: tvm.IRModule, binding: relax.Binding) -> dict | None:
        """The recipe of a unified kernel called by ``binding`` with no epilogue yet and constant ELL arrays.

        fp16 GPU kernels are left alone: their epilogue ops come after casts to float32 (ToMixedPrecision
        keeps BatchNorm in fp32), and the epilogue operands are float32."""
        call = binding.value
        if not isinstance(binding, relax.VarBinding) or not isinstance(call, relax.Call) or call.op != CALL_TIR:
            return None
        recipe = recipe_of(mod[call.args[0]])
        args = call.args[1].fields
        if recipe is None or recipe.get("gpu_precision", "fp32") != "fp32" or recipe["epilogue"] or not all(isinstance(args[i], tvm.ir.GenericConst)
                                                           for i in recipe["ell_args"]):
            return None
        return recipe

    @staticmethod
    def _follow(head: relax.VarBinding, users: dict[relax.Var, relax.VarBinding], chain: _Chain,
                taken: set[relax.Var]) -> tuple[list[relax.VarBinding], list[Step]]:
        """The bindings after ``head`` that fuse, and their steps (``taken``: bindings already fused
        elsewhere, such as a residual add claimed by the other branch's kernel)."""
        members: list[relax.VarBinding] = []
        steps: list[Step] = []
        value = head.var
        while (user := users.get(value)) is not None and user.var not in taken:
            step = chain.step(user, value)
            if step is None:
                break
            members.append(user)
            steps.append(step)
            value = user.var
        return members, steps

    def _fused_call(self, builder: relax.BlockBuilder, head: relax.VarBinding, recipe: dict,
                    steps: list[Step]) -> relax.Call:
        """``head``'s call with its kernel regenerated to apply ``steps`` (folded) at its store."""
        gvar, args = head.value.args[0], list(head.value.args[1].fields)
        steps = fold_epilogue(steps)
        kernel = (regenerate_gpu if is_gpu_recipe(recipe) else regenerate)(
            recipe, [args[i].value.numpy() for i in recipe["ell_args"]], steps)
        fused = builder.add_func(kernel.without_attr("global_symbol"), f"{gvar.name_hint}_fused")
        self.fused.append((gvar.name_hint, tuple(step.describe() for step in steps)))
        operands = [relax.const(o) if isinstance(o, np.ndarray) else o for step in steps for o in step.operands()]
        return relax.call_tir(fused, args + operands, head.var.ty)
