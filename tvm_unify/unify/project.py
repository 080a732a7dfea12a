"""Exact Euclidean projection onto the unified-block constraint set.

Every block of ``n`` weights ends in one of three states: **pruned** (all zero), **unified**
(``s * sign``, one magnitude per block, signs free) or **free** (dense). For a block ``w`` the best
unified block keeps ``sign(w)`` (``+1`` for zeros) and takes ``s = mean|w|``; its squared error is
``sum(w^2) - n*mean|w|^2``. Pruning costs ``sum(w^2)``, so pruning instead of unifying costs
``n*mean|w|^2`` more: with every survivor unified, the projection prunes the blocks with the smallest
``n*mean|w|^2``; with every survivor free (``unified=0``) it is plain magnitude block pruning.

With a mix (``0 < unified < 1``) the projection is a three-way assignment under fixed counts. An
exchange argument shows an optimum where every free block has a larger unification error
``d = sum(w^2) - n*mean|w|^2`` than every unified one, so sorting by ``d`` and trying every split point
(free blocks chosen from the prefix by energy, unified ones from the suffix by ``n*mean|w|^2``) finds
the exact optimum in ``O(N log N)``.

Statistics are computed in float64: ``mean|w|`` of ``n`` equal magnitudes then returns the magnitude
itself, so projecting twice is bit-exactly the same as projecting once.
"""

from __future__ import annotations

import heapq
import math

import numpy as np
import torch

from ..format import from_blocks, to_blocks
from .spec import LayerSpec

PRUNED, UNIFIED, FREE = 0, 1, 2


def project_weight(
    weight: torch.Tensor,
    block: tuple[int, int] = (1, 4),
    sparsity: float = 0.75,
    layout: str = "tap",
    unified: float = 1.0,
) -> torch.Tensor:
    """The nearest weight (Euclidean) whose blocks are pruned, unified or free as the spec asks.

    A pure function for anyone who needs exactly unified weights (tests of the compiler, for one):
    ``project_weight(torch.randn(64, 32, 3, 3), (1, 4), 0.75)`` prunes 75% of the 1x4 per-tap blocks
    and gives every other block one magnitude with the original signs.
    """
    return project_layer(weight, LayerSpec(tuple(block), sparsity, unified, layout))[0]


def project_layer(weight: torch.Tensor, spec: LayerSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """``(projected weight, block kinds)`` for one layer; kinds hold PRUNED/UNIFIED/FREE per block."""
    blocks = to_blocks(weight.detach(), spec.block, spec.layout)
    kinds = assign_blocks(blocks, *block_counts(blocks.shape[0], spec))
    projected = project_blocks(blocks, kinds)
    return from_blocks(projected, tuple(weight.shape), spec.block, spec.layout), kinds


def block_counts(num_blocks: int, spec: LayerSpec) -> tuple[int, int]:
    """``(pruned, free)`` block counts for a layer of ``num_blocks`` blocks (rounded to nearest)."""
    pruned = int(math.floor(spec.sparsity * num_blocks + 0.5))
    unified = int(math.floor(spec.unified * (num_blocks - pruned) + 0.5))
    return pruned, num_blocks - pruned - unified


def unify_signs(blocks: torch.Tensor) -> torch.Tensor:
    """``sign(w)`` with ``+1`` for zeros: a unified block has no zero entries."""
    return torch.where(blocks >= 0, 1.0, -1.0).to(blocks.dtype)


def block_magnitudes(blocks: torch.Tensor) -> torch.Tensor:
    """``mean|w|`` per block, computed in float64 and rounded once to the weight's dtype."""
    return blocks.double().abs().mean(dim=1).to(blocks.dtype)


def assign_blocks(blocks: torch.Tensor, pruned: int, free: int) -> torch.Tensor:
    """Kinds per block minimizing the projection error with exactly ``pruned`` and ``free`` blocks."""
    wide = blocks.detach().double()
    energy = (wide * wide).sum(dim=1)  # error if pruned, gain if free
    gain = wide.abs().mean(dim=1).square() * wide.shape[1]  # n*mean|w|^2: gain if unified
    num = blocks.shape[0]
    kinds = torch.full((num,), UNIFIED, dtype=torch.int8, device=blocks.device)
    if free == 0:
        kinds[_smallest(gain, pruned)] = PRUNED
        return kinds
    kinds.fill_(FREE)
    if free == num - pruned:
        kinds[_smallest(energy, pruned)] = PRUNED
        return kinds
    free_idx, unified_idx = _three_way(energy.cpu().numpy(), gain.cpu().numpy(), free, num - pruned - free)
    kinds.fill_(PRUNED)
    kinds[torch.from_numpy(unified_idx).to(kinds.device)] = UNIFIED
    kinds[torch.from_numpy(free_idx).to(kinds.device)] = FREE
    return kinds


def project_blocks(blocks: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
    """Apply block kinds: zeros, ``mean|w| * sign(w)``, or the block unchanged."""
    unified = block_magnitudes(blocks)[:, None] * unify_signs(blocks)
    kinds = kinds.to(blocks.device)[:, None]
    return torch.where(kinds == UNIFIED, unified, torch.where(kinds == FREE, blocks, torch.zeros_like(blocks)))


def classify_blocks(weight: torch.Tensor, block: tuple[int, int], layout: str = "tap") -> torch.Tensor:
    """Kinds read off the values, bit-exactly: all zero, all the same magnitude, or anything else."""
    blocks = to_blocks(weight.detach(), block, layout)
    mags = blocks.abs()
    pruned = (mags == 0).all(dim=1)
    unified = (mags == mags[:, :1]).all(dim=1) & ~pruned
    kinds = torch.full((blocks.shape[0],), FREE, dtype=torch.int8, device=blocks.device)
    kinds[unified] = UNIFIED
    kinds[pruned] = PRUNED
    return kinds


def _smallest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` smallest scores (stable: ties go to the lower index)."""
    return torch.sort(scores, stable=True).indices[:count]


def _three_way(energy: np.ndarray, gain: np.ndarray, free: int, unified: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact split into ``free`` and ``unified`` blocks (the rest pruned) maximizing the kept energy."""
    order = np.argsort(-(energy - gain), kind="stable")
    prefix = _running_top_sums(energy[order], free)
    suffix = _running_top_sums(gain[order][::-1], unified)[::-1]
    split = int(np.argmax(prefix + suffix))
    head, tail = order[:split], order[split:]
    free_idx = head[np.argsort(-energy[head], kind="stable")[:free]]
    unified_idx = tail[np.argsort(-gain[tail], kind="stable")[:unified]]
    return free_idx, unified_idx


def _running_top_sums(values: np.ndarray, count: int) -> np.ndarray:
    """``out[k]`` = sum of the ``count`` largest of ``values[:k]`` (-inf while fewer than ``count``)."""
    out = np.full(len(values) + 1, -np.inf)
    heap: list[float] = []
    total = 0.0
    for k, value in enumerate(values.tolist()):
        if len(heap) < count:
            heapq.heappush(heap, value)
            total += value
        elif count and value > heap[0]:
            total += value - heapq.heapreplace(heap, value)
        if len(heap) == count:
            out[k + 1] = total
    if count == 0:
        out[:] = 0.0
    return out
