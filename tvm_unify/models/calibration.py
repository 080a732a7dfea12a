"""BatchNorm calibration: give an untrained net realistic activations without training it.

Raw random-init deep nets shrink their activations towards denormals and collapse to the classifier
bias, so a wrong kernel would still "match" PyTorch (docs/design.md, Measuring). Re-estimating every
BatchNorm's statistics on random batches and zeroing the final bias keeps outputs input-dependent.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def calibrate_batchnorm(
    model: nn.Module, input_shape: tuple[int, ...], batches: int = 4, batch_size: int = 8, seed: int = 0
) -> nn.Module:
    """Set BN running stats to exact averages over ``batches`` random batches; zero the last bias."""
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batches
    if norms:
        model.train()
        for _ in range(batches):
            model(torch.randn((batch_size, *input_shape[1:]), generator=generator))
    last_linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if last_linear and last_linear[-1].bias is not None:
        last_linear[-1].bias.zero_()
    return model.eval()
