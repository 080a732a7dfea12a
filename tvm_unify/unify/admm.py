"""ADMM state for unified-block training: the auxiliary ``Z``, the scaled dual ``U`` and the penalty.

Per constrained layer, with ``W`` the weight: the W-step trains on ``task_loss + rho/2 ||W - Z + U||^2``
(``penalty``), the Z-step projects ``W + U`` exactly onto the constraint set, the U-step adds the
primal residual ``W - Z`` to ``U`` (``update``). ``rho`` grows each round (``set_rho``, which keeps
the unscaled multiplier) so that the weights are pulled ever closer to a structured point before the
hard projection.

Under ``torch.distributed`` the Z/U updates are computed on every rank and then broadcast from rank 0,
so all ranks hold bit-identical ``Z``/``U`` even if a device's kernels were not deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..format import to_blocks
from .project import project_layer
from .spec import Layer, LayerSpec

# A block counts as satisfied when its distance to Z is within 10% of the layer's RMS block norm.
SATISFIED_TOL = 0.1


@dataclass
class ResidualStats:
    """How far the weights are from the constraint set: ``||W - Z||``, relative, satisfied blocks."""

    residual: float
    relative: float
    satisfied: float


class ADMMState:
    """``Z`` and ``U`` for each constrained weight, and the current ``rho``."""

    def __init__(self, model: nn.Module, layers: dict[str, tuple[Layer, LayerSpec]], rho: float) -> None:
        modules = dict(model.named_modules())
        self.weights = {name: modules[name].weight for name in layers}
        self.specs = {name: spec for name, (_, spec) in layers.items()}
        self.rho = rho
        self.z = {name: project_layer(w, self.specs[name])[0] for name, w in self.weights.items()}
        self.u = {name: torch.zeros_like(w, requires_grad=False) for name, w in self.weights.items()}
        _sync(self.z)

    def penalty(self) -> torch.Tensor:
        """``rho/2 * sum ||W - Z + U||^2`` over the constrained layers (differentiable in W)."""
        total = sum(((w - self.z[n] + self.u[n]) ** 2).sum() for n, w in self.weights.items())
        return 0.5 * self.rho * total

    @torch.no_grad()
    def update(self) -> ResidualStats:
        """Z-step then U-step; returns the primal residual against the new ``Z``."""
        for name, w in self.weights.items():
            self.z[name] = project_layer(w + self.u[name], self.specs[name])[0]
            self.u[name] += w - self.z[name]
        _sync(self.z)
        _sync(self.u)
        return self.residual()

    @torch.no_grad()
    def residual(self) -> ResidualStats:
        """``||W - Z||`` over all layers, relative to ``||W||``, and the fraction of satisfied blocks."""
        sq_res = sq_norm = 0.0
        satisfied = blocks = 0
        for name, w in self.weights.items():
            spec = self.specs[name]
            diff = to_blocks(w - self.z[name], spec.block, spec.layout).norm(dim=1)
            rms_block = w.norm() / diff.numel() ** 0.5
            satisfied += int((diff <= SATISFIED_TOL * rms_block).sum())
            blocks += diff.numel()
            sq_res += float(diff.square().sum())
            sq_norm += float(w.square().sum())
        return ResidualStats(sq_res ** 0.5, (sq_res / max(sq_norm, 1e-30)) ** 0.5, satisfied / max(blocks, 1))

    def set_rho(self, rho: float) -> None:
        """Change the penalty, rescaling the scaled dual ``U = lambda / rho`` so the multiplier ``lambda``
        is kept: without it a growing ``rho`` would multiply the accumulated pull on the weights too."""
        for u in self.u.values():
            u.mul_(self.rho / rho)
        self.rho = rho


def _sync(tensors: dict[str, torch.Tensor]) -> None:
    """Make every rank hold rank 0's tensors (no-op outside torch.distributed)."""
    if dist.is_available() and dist.is_initialized():
        for tensor in tensors.values():
            dist.broadcast(tensor, src=0)
