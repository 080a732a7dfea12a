"""Which layers get unified, and how: the block spec, its parsing, and the default layer policy.

A *block* is a ``rows x cols`` tile of a weight viewed as a matrix over (out channels, in channels):

* ``linear``: the weight ``(out, in)`` itself.
* ``conv2d``, layout ``tap`` (the default): one ``(out, in/groups)`` matrix per kernel tap ``(ky, kx)``,
  so a block never mixes taps. Every tap of a ``3x3`` conv is then a 1x1 conv with the same block
  structure, the form a compiler lowers to shifted GEMMs with contiguous input channels.
* ``conv2d``, layout ``flat``: the weight reshaped to ``(out, in/groups*kh*kw)`` in PyTorch's order
  (``ic*kh*kw + ky*kw + kx``), the im2col GEMM view; it accepts more block shapes (only
  ``in*kh*kw`` must divide) at the price of blocks that straddle taps.

Policy (``UnifyConfig`` defaults): the first weight layer (it sees the raw input) and the last one (the
classifier) stay dense, depthwise convs (one input channel per group: nothing to block over) are
skipped, and grouped convs are unified within each group (block rows must divide ``out/groups``).
A block never gets padded (that would change the weight shape the compiler sees). A layer the default
policy picked but the block does not tile stays dense, and the plan says why (LeNet's 6-channel conv2
with 1x4 blocks, say); a layer asked for by name in ``layers`` that the block does not tile is an error,
as is a policy that finds no layer the block tiles.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

import torch
from torch import nn

from ..errors import UserError
from ..format import LAYOUTS, block_fits

FilterFn = Callable[[nn.Module, str], bool]


def parse_block(text: str) -> tuple[int, int]:
    """Parse ``1x4`` (rows over out channels x cols over in channels) into ``(1, 4)``."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or int(match[1]) <= 0 or int(match[2]) <= 0:
        raise UserError(f"bad block shape {text!r}: expected ROWSxCOLS with positive integers, e.g. 1x4")
    return int(match[1]), int(match[2])


SPEC_FIELDS = ("block", "sparsity", "unified", "layout")


def parse_layer_override(text: str) -> tuple[str, dict[str, object]]:
    """Parse ``NAME:block=4x4,sparsity=0.5`` (a ``--layer`` option) into ``(NAME, {field: value})``."""
    name, sep, body = text.partition(":")
    fields: dict[str, object] = {}
    for item in body.split(",") if sep else []:
        key, eq, value = item.partition("=")
        key = key.strip()
        if eq and key not in SPEC_FIELDS:
            raise UserError(f"bad layer spec {text!r}: unknown spec field {key!r} (use {', '.join(SPEC_FIELDS)})")
        if not eq or not value.strip():
            raise UserError(f"bad layer spec {text!r}: expected NAME:key=value[,key=value] "
                            "with keys block, sparsity, unified, layout")
        if key in ("sparsity", "unified"):
            try:
                fields[key] = float(value)
            except ValueError:
                raise UserError(f"bad layer spec {text!r}: {key} must be a number") from None
        else:
            fields[key] = parse_block(value) if key == "block" else value.strip()
    if not name.strip() or not fields:
        raise UserError(f"bad layer spec {text!r}: expected NAME:key=value[,key=value]")
    return name.strip(), fields


@dataclass(frozen=True)
class LayerSpec:
    """The constraint for one layer: block shape, fraction of pruned blocks, fraction unified of the rest.

    ``unified`` is the fraction of *surviving* blocks that are unified (``w = s * sign``); the others
    stay free (dense). 1.0, the default, makes every surviving block unified.
    """

    block: tuple[int, int] = (1, 4)
    sparsity: float = 0.75
    unified: float = 1.0
    layout: str = "tap"

    def __post_init__(self) -> None:
        if len(self.block) != 2 or min(self.block) <= 0:
            raise UserError(f"bad block shape {self.block}: expected two positive integers (rows, cols)")
        if not 0.0 <= self.sparsity < 1.0:
            raise UserError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if not 0.0 <= self.unified <= 1.0:
            raise UserError(f"unified fraction must be in [0, 1], got {self.unified}")
        if self.layout not in LAYOUTS:
            raise UserError(f"unknown layout {self.layout!r} (choose from {', '.join(LAYOUTS)})")

    @property
    def block_size(self) -> int:
        return self.block[0] * self.block[1]


@dataclass(frozen=True)
class UnifyConfig(LayerSpec):
    """Model-wide spec: the default ``LayerSpec`` plus the layer policy and per-layer overrides.

    ``layers`` maps a module path (``layers.0.conv1``) to the ``LayerSpec`` for that layer (naming a
    layer there also constrains it if the policy would skip it); ``skip`` lists module paths kept dense;
    ``dense_first_last`` keeps the first and last weight layers dense.
    """

    skip: tuple[str, ...] = ()
    layers: Mapping[str, LayerSpec] = field(default_factory=dict)
    dense_first_last: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, spec in self.layers.items():
            if not isinstance(spec, LayerSpec):
                raise UserError(f"layer {name}: expected a LayerSpec, got {type(spec).__name__}")

    @property
    def default(self) -> LayerSpec:
        """The spec of every layer without an override."""
        return LayerSpec(self.block, self.sparsity, self.unified, self.layout)

    def layer_spec(self, name: str) -> LayerSpec:
        return self.layers.get(name, self.default)


@dataclass(frozen=True)
class Layer:
    """A weight layer found in a model: its module path, kind, weight parameter and conv groups."""

    name: str
    kind: str  # "conv2d" or "linear"
    weight: torch.Tensor
    groups: int = 1

    @property
    def depthwise(self) -> bool:
        return self.kind == "conv2d" and self.weight.shape[1] == 1 and self.weight[0].numel() > 1


def find_layers(model: nn.Module) -> list[Layer]:
    """Conv2d and Linear layers in module order; works on ``nn.Module`` and (traced) ``ScriptModule``."""
    found = []
    for name, module in model.named_modules():
        kind = _layer_kind(module)
        weight = getattr(module, "weight", None)
        if kind and isinstance(weight, torch.Tensor):
            found.append(Layer(name, kind, weight, int(getattr(module, "groups", 1) or 1)))
    return found


def _layer_kind(module: nn.Module) -> str | None:
    if isinstance(module, nn.Conv2d):
        return "conv2d"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, torch.jit.ScriptModule):  # a loaded or traced module keeps its class name
        return {"Conv2d": "conv2d", "Linear": "linear"}.get(getattr(module, "original_name", ""))
    return None


@dataclass
class LayerPlan:
    """What a config does to a model: the layers it constrains, and the ones left dense that it could
    not constrain (module path -> why)."""

    constrained: dict[str, tuple[Layer, LayerSpec]]
    dense: dict[str, str] = field(default_factory=dict)


def plan_layers(model: nn.Module, config: UnifyConfig, filter_fn: FilterFn | None = None) -> LayerPlan:
    """The layers to constrain, validated against their weight shapes (see the module docstring).

    ``filter_fn(module, name)``, as in torchao, replaces the default policy (first/last dense,
    depthwise skipped); the skip list and per-layer overrides apply either way.
    """
    layers = find_layers(model)
    by_name = {layer.name: layer for layer in layers}
    for name in [*config.skip, *config.layers]:
        if name not in by_name:
            known = ", ".join(by_name) or "none"
            raise UserError(f"unknown layer {name!r} (conv2d/linear layers of this model: {known})")
    modules = dict(model.named_modules())
    plan = LayerPlan({})
    for index, layer in enumerate(layers):
        if layer.name in config.skip:
            continue
        if filter_fn is not None:
            wanted = filter_fn(modules[layer.name], layer.name)
        else:
            edge = config.dense_first_last and index in (0, len(layers) - 1)
            wanted = not edge and not layer.depthwise
        if not (wanted or layer.name in config.layers):
            continue
        spec = config.layer_spec(layer.name)
        misfit = misfit_reason(layer, spec)
        if misfit and layer.name in config.layers:
            raise UserError(misfit)
        if misfit:
            plan.dense[layer.name] = misfit
        else:
            plan.constrained[layer.name] = (layer, spec)
    if plan.dense and not plan.constrained:
        raise UserError(f"no layer fits the block: {'; '.join(plan.dense.values())}")
    return plan


def resolve_specs(
    model: nn.Module, config: UnifyConfig, filter_fn: FilterFn | None = None
) -> dict[str, tuple[Layer, LayerSpec]]:
    """The constrained layers of ``plan_layers`` (module path -> layer, spec)."""
    return plan_layers(model, config, filter_fn).constrained


def misfit_reason(layer: Layer, spec: LayerSpec) -> str | None:
    """One line saying why the block does not tile the layer (per group for grouped convs), or None."""
    shape = tuple(layer.weight.shape)
    bo, bi = spec.block
    misfit = block_fits(shape, spec.block, spec.layout)
    if misfit is None and layer.groups > 1 and (shape[0] // layer.groups) % bo:
        misfit = f"{bo} rows do not divide its {shape[0] // layer.groups} out channels per group"
    if misfit is None:
        return None
    return (f"layer {layer.name} ({layer.kind} {'x'.join(map(str, shape))}): block {bo}x{bi} does not divide "
            f"it in the {spec.layout} layout ({misfit})")
