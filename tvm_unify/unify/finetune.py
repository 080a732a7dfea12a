"""Masked fine-tuning with the block structure exact by construction.

``freeze_structure_`` re-parametrizes each constrained weight (``torch.nn.utils.parametrize``) so its
trainable tensors are one magnitude per unified block and the values of the free blocks; the weight is
rebuilt as ``scale * sign`` / free values / zeros on every forward. No optimizer step can break the
structure, and ``release_structure_`` bakes the weight back into a plain parameter whose blocks are
bit-exactly pruned (``+0.0``) or unified (``±s``), ready for export.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..format import from_blocks, to_blocks
from .project import FREE, UNIFIED, block_magnitudes, project_layer, unify_signs
from .spec import Layer, LayerSpec


class UnifiedBlocks(nn.Module):
    """Parametrization ``(scales, free values) -> weight`` for fixed block kinds and signs."""

    def __init__(self, weight: torch.Tensor, kinds: torch.Tensor, spec: LayerSpec) -> None:
        super().__init__()
        self.shape = tuple(weight.shape)
        self.block = spec.block
        self.layout = spec.layout
        blocks = to_blocks(weight.detach(), spec.block, spec.layout)
        self.register_buffer("signs", unify_signs(blocks)[kinds == UNIFIED].contiguous())
        self.register_buffer("unified_idx", torch.nonzero(kinds == UNIFIED).flatten())
        self.register_buffer("free_idx", torch.nonzero(kinds == FREE).flatten())
        self.num_blocks = blocks.shape[0]

    def forward(self, scales: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
        blocks = scales.new_zeros((self.num_blocks, self.block[0] * self.block[1]))
        blocks = blocks.index_copy(0, self.unified_idx, scales[:, None] * self.signs)
        blocks = blocks.index_copy(0, self.free_idx, free)
        return from_blocks(blocks, self.shape, self.block, self.layout)

    def right_inverse(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        blocks = to_blocks(weight.detach(), self.block, self.layout)
        return block_magnitudes(blocks[self.unified_idx]).contiguous(), blocks[self.free_idx].contiguous()


def freeze_structure_(model: nn.Module, layers: dict[str, tuple[Layer, LayerSpec]]) -> dict[str, torch.Tensor]:
    """Hard-project each layer and make its structure the parametrization; returns block kinds per layer."""
    modules = dict(model.named_modules())
    kinds_by_layer = {}
    for name, (layer, spec) in layers.items():
        module = modules[name]
        projected, kinds = project_layer(module.weight, spec)
        with torch.no_grad():
            module.weight.copy_(projected)
        parametrize.register_parametrization(module, "weight", UnifiedBlocks(projected, kinds, spec), unsafe=True)
        kinds_by_layer[name] = kinds
    return kinds_by_layer


def release_structure_(model: nn.Module) -> nn.Module:
    """Bake every parametrized weight back into a plain parameter (values unchanged, bit for bit)."""
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model
