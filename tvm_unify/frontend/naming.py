"""Layer names for the imported graph: the importer keeps weights as anonymous constants, so each is
named after the torch module that owns it by the fingerprint of its value (``format.weight_fingerprint``)."""

from __future__ import annotations

import torch

from ..format import weight_fingerprint


def layer_names(module: torch.nn.Module) -> dict[str, str]:
    """``weight_fingerprint`` -> module path for every 2D/4D ``*.weight`` of a (TorchScript) module."""
    return {weight_fingerprint(t.detach().numpy()): key.removesuffix(".weight")
            for key, t in module.state_dict().items() if key.endswith(".weight") and t.dim() in (2, 4)}
