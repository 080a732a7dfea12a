"""Export a unified model as TorchScript with its block spec, and the storage cost of that format.

The spec travels in the TorchScript file's ``_extra_files["tvm_unify.json"]`` (``torchscript.py``);
``unify_metadata`` fills its ``"unify"`` key. Every count in it is *measured* on the exported weights
(``classify_blocks``), not copied from the request. Schema, format 1::

    {
      "input_shape": [1, 1, 8, 8],          # batch-1 input (written by save_torchscript)
      "model": "digits-cnn",                # where the model came from (built-in name, file, factory)
      "data": "digits",                     # after training only: the built-in data set,
      "accuracy": 0.9917,                   #   test accuracy of the exported weights,
      "dense_accuracy": 0.9917,             #   and of the dense network before unification
      "unify": {
        "format": 1,
        "dense": {"conv2": "layer conv2 ...: block 1x4 does not divide it ..."},  # only if any: layers
                                             # the policy picked but the block does not tile, kept dense
        "layers": [                          # constrained layers only, in module order
          {
            "name": "features.3",           # module path (nn.Module.named_modules)
            "param": "features.3.weight",   # state-dict key of the weight constant
            "kind": "conv2d",               # or "linear"
            "weight_shape": [64, 32, 3, 3], # (out, in/groups, kh, kw) or (out, in)
            "groups": 1,
            "block": [1, 4],                # rows over out channels x cols over in channels
            "layout": "tap",                # "tap": per kernel tap (out x in); "flat": out x (in*kh*kw)
            "target_sparsity": 0.75,        # what was asked
            "target_unified": 1.0,
            "sparsity": 0.75,               # reached: pruned blocks / all blocks
            "unified_fraction": 1.0,        # reached: unified blocks / surviving blocks (1.0 if none)
            "blocks": {"total": 4608, "pruned": 3456, "unified": 1152, "free": 0},
            "storage_bits": 78368,          # compressed size, see storage_bits()
            "dense_bits": 589824,           # 32 * weight count
            "bits_per_weight": 4.2517
          }
        ]
      }
    }

Block order and the ``tap``/``flat`` views are defined in ``format.py``; a unified block holds
``±s`` (same magnitude, bit for bit), a pruned one ``+0.0``, a free one anything. The compiler should
still verify every block itself.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import UserError
from ..torchscript import save_torchscript
from .project import FREE, PRUNED, UNIFIED, classify_blocks
from ..format import matrix_shape
from .spec import FilterFn, Layer, LayerPlan, LayerSpec, UnifyConfig, plan_layers

FORMAT_VERSION = 1
SCALE_BITS = 32
POINTER_BITS = 32


def storage_bits(counts: dict[str, int], spec: LayerSpec, weight_shape: tuple[int, ...]) -> int:
    """Bits of the compressed format (docs/design.md): BSR over blocks with unified payloads.

    A unified block costs one fp32 scale plus one sign bit per weight (``32 + n``), a free block
    ``32n``, a pruned block nothing; every stored block also costs its column index (16 bits, 32 if
    the matrix has more than 65,536 block columns), and every block row of the ``(O, K)`` matrix view
    (``format.matrix_shape``) one 32-bit row pointer.
    """
    rows, cols = matrix_shape(tuple(weight_shape))
    n = spec.block_size
    index_bits = 16 if cols // spec.block[1] <= 1 << 16 else 32
    payload = counts["unified"] * (SCALE_BITS + n) + counts["free"] * SCALE_BITS * n
    index = (counts["unified"] + counts["free"]) * index_bits + (rows // spec.block[0] + 1) * POINTER_BITS
    return payload + index


def block_counts_of(weight: torch.Tensor, spec: LayerSpec) -> dict[str, int]:
    """Pruned / unified / free block counts measured on the weight values."""
    kinds = classify_blocks(weight, spec.block, spec.layout)
    tally = torch.bincount(kinds.long().cpu(), minlength=3).tolist()
    return {"total": int(kinds.numel()), "pruned": tally[PRUNED], "unified": tally[UNIFIED], "free": tally[FREE]}


def layer_record(layer: Layer, spec: LayerSpec) -> dict[str, Any]:
    """The metadata entry for one constrained layer (schema in the module docstring)."""
    counts = block_counts_of(layer.weight, spec)
    kept = counts["total"] - counts["pruned"]
    shape = tuple(layer.weight.shape)
    bits = storage_bits(counts, spec, shape)
    return {
        "name": layer.name,
        "param": f"{layer.name}.weight" if layer.name else "weight",
        "kind": layer.kind,
        "weight_shape": list(shape),
        "groups": layer.groups,
        "block": list(spec.block),
        "layout": spec.layout,
        "target_sparsity": spec.sparsity,
        "target_unified": spec.unified,
        "sparsity": counts["pruned"] / counts["total"],
        "unified_fraction": counts["unified"] / kept if kept else 1.0,
        "blocks": counts,
        "storage_bits": bits,
        "dense_bits": 32 * layer.weight.numel(),
        "bits_per_weight": round(bits / layer.weight.numel(), 4),
    }


def unify_metadata(plan: LayerPlan) -> dict[str, Any]:
    """The ``"unify"`` metadata value: a record per constrained layer, and why any other stayed dense."""
    meta: dict[str, Any] = {"format": FORMAT_VERSION,
                            "layers": [layer_record(layer, spec) for layer, spec in plan.constrained.values()]}
    if plan.dense:
        meta["dense"] = dict(plan.dense)
    return meta


def export_unified(
    model: nn.Module,
    path: str | os.PathLike,
    config: UnifyConfig = UnifyConfig(),
    *,
    input_shape: Sequence[int] | None = None,
    metadata: dict[str, Any] | None = None,
    filter_fn: FilterFn | None = None,
) -> dict[str, Any]:
    """Save ``model`` (moved to CPU, eval mode) as TorchScript with the unify spec; returns the metadata.

    The constrained layers are those ``config`` (and ``filter_fn``) select on ``model``, and every count
    recorded is measured on its weights. ``input_shape`` (batch 1, for tracing) defaults to the model's
    ``input_shape`` attribute.
    """
    shape = tuple(input_shape or getattr(model, "input_shape", None) or ())
    if not shape:
        raise UserError("input_shape is needed to trace the model for export")
    meta = dict(metadata or {})
    meta["unify"] = unify_metadata(plan_layers(model, config, filter_fn))
    model = model.cpu().eval()
    save_torchscript(model, path, shape, meta)
    return meta


def read_unify_metadata(metadata: dict[str, Any], path: str | os.PathLike) -> list[dict[str, Any]]:
    """The layer records of a loaded model's metadata, or a one-line error if it has none we know."""
    unify = metadata.get("unify")
    if not isinstance(unify, dict) or "layers" not in unify:
        raise UserError(f"{path} carries no unify metadata (write it with `tvm-unify unify`)")
    if unify.get("format") != FORMAT_VERSION:
        raise UserError(f"{path}: unsupported unify metadata format {unify.get('format')!r} "
                        f"(this version reads {FORMAT_VERSION})")
    return unify["layers"]
