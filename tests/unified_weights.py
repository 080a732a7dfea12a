"""Unified weights for tests: the ADMM side's exact Euclidean projection (``unify.project``), so the
compiler is tested on exactly what training exports (signs kept, mean |w| per block, lowest-energy
blocks pruned).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tvm_unify.format import to_matrix
from tvm_unify.unify.project import project_weight


def project(weight: np.ndarray, block: tuple[int, int], sparsity: float, layout: str = "tap",
            unified: float = 1.0) -> np.ndarray:
    return project_weight(torch.from_numpy(np.asarray(weight, dtype=np.float32)), block, sparsity, layout,
                          unified).numpy()


@torch.no_grad()
def unify_model(model: nn.Module, block: tuple[int, int], sparsity: float, layout: str = "tap") -> list[str]:
    """Project every groups=1 conv (but a 3-channel stem) and hidden linear in place; return their names."""
    names = []
    for name, module in model.named_modules():
        eligible = (isinstance(module, nn.Conv2d) and module.groups == 1 and module.in_channels > 3) or (
            isinstance(module, nn.Linear) and module.out_features % block[0] == 0 and module.out_features > 16)
        if eligible and module.weight.shape[0] % block[0] == 0:
            w = module.weight.numpy()
            if to_matrix(w, layout).shape[1] % block[1] == 0:
                module.weight.copy_(torch.from_numpy(project(w, block, sparsity, layout)))
                names.append(name)
    return names
