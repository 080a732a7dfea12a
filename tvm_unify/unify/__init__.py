"""Micro-structured weight unification: every weight block pruned to zero or unified to ``s * sign``.

The library, torchao style::

    from tvm_unify.unify import UnifyConfig, unify_, train_unify, export_unified

    unify_(model, UnifyConfig(block=(1, 4), sparsity=0.75))           # one-shot, in place, no data
    model, layers, report = train_unify(model, (1, 1, 8, 8), UnifyConfig(block=(4, 4)))  # ADMM
    export_unified(model, "out.pt", (1, 1, 8, 8), layers)              # TorchScript + block spec

Modules: ``spec`` (block spec, layer policy), ``project`` (exact
projection), ``admm`` (Z/U state), ``finetune`` (structure-exact fine-tuning), ``train`` (epochs,
DDP), ``pipeline`` (the verbs), ``export`` (metadata schema), ``inspect`` (storage table),
``sources`` (MODEL argument), ``commands`` (CLI).
"""

from importlib import import_module
from typing import Any

# Public names -> defining module, imported on first use: the CLI imports this package's ``commands``
# at start-up and must not pay for torch unless a unify command runs.
_EXPORTS = {
    "export_unified": "export", "unify_metadata": "export",
    "Schedule": "pipeline", "UnifyReport": "pipeline", "train_dense": "pipeline", "train_unify": "pipeline",
    "unify_": "pipeline", "unify_builtin": "pipeline",
    "classify_blocks": "project", "project_weight": "project",
    "LayerPlan": "spec", "LayerSpec": "spec", "UnifyConfig": "spec", "parse_block": "spec", "plan_layers": "spec",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
