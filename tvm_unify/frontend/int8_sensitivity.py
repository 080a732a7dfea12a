"""Which unified layers of an int8 build stay fp32: a greedy sensitivity search on the calibration samples.

Per-tensor int8 activations cost a deep, thin net more than a wide one: in a trained MobileNetV2 the
rounding of 34 layers adds up to 9% of the output scale (ResNet-18: under 1%), and a few early layers
account for most of it. Keeping those layers in fp32 buys the accuracy back for a small share of the
work. The search runs the model in PyTorch with each layer's input fake-quantized exactly as the int8
kernels quantize it (``clamp(round(x / scale), -127, 127) * scale`` with the calibrated scale), measures
``max |out - ref| / max |ref|`` over the samples, and moves layers to fp32, the most damaging first (each
measured alone), until all the others quantized together meet ``max_error``.
"""

from __future__ import annotations

from typing import Collection, Mapping

import numpy as np
import torch
from torch import fx

from ..format import analyze, specs_from_metadata
from .act_calibration import LayerInputs, program_of, sample_batches
from .importer import ImportedModel
from .naming import layer_names as module_layer_names

DEFAULT_MAX_ERROR = 0.015  # of the output scale on the calibration samples: 0.02-0.03 on held-out data
SENSITIVITY_SAMPLES = 16  # enough to rank the layers; each trial runs the model on all of them


class _FakeQuant(LayerInputs):
    """Runs the graph with the inputs of the layers in ``quantized`` rounded onto their int8 grids."""

    def __init__(self, module: fx.GraphModule, names: Mapping[str, str], scales: Mapping[str, float]) -> None:
        super().__init__(module, names)
        self.scales = scales
        self.quantized: Collection[str] = ()

    def layer_input(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if name not in self.quantized:
            return x
        return fake_quantize(x, torch.tensor(self.scales[name], dtype=x.dtype))


def fake_quantize(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x`` rounded onto the int8 grid of ``scale`` as the int8 kernels quantize it: ``clamp(round(x *
    (1 / scale)), -127, 127) * scale``, the reciprocal taken in x's dtype."""
    return torch.clamp(torch.round(x * (1 / scale)), -127, 127) * scale


def unified_layers(model: ImportedModel) -> list[str]:
    """Module paths of the conv/linear weights that verify as unified (by the file's block spec, else the
    detected block): the layers whose inputs an int8 build quantizes."""
    specs = specs_from_metadata(model.metadata)
    weights = {key.removesuffix(".weight"): t for key, t in model.torch_module.state_dict().items()
               if key.endswith(".weight") and t.dim() in (2, 4)}
    return [name for name, t in weights.items() if analyze(t.detach().numpy(), specs.get(name)).ok]


@torch.no_grad()
def int8_fp32_fallback(model: ImportedModel, samples: np.ndarray, scales: Mapping[str, float],
                       layers: Collection[str], max_error: float = DEFAULT_MAX_ERROR) -> list[str]:
    """The layers of ``layers`` (module paths with calibrated ``scales``) to keep in fp32 so that int8
    inputs for the rest move the output by at most ``max_error`` of its scale on ``samples`` (the first
    ``SENSITIVITY_SAMPLES`` of them); empty when all-int8 already does."""
    candidates = [name for name in layers if name in scales]
    batches = [torch.from_numpy(b) for b in sample_batches(samples, model.input_shape)[:SENSITIVITY_SAMPLES]]
    interpreter = _FakeQuant(program_of(model, model.input_shape).module(), module_layer_names(model.torch_module),
                             scales)

    def outputs(quantized: Collection[str]) -> torch.Tensor:
        interpreter.quantized = set(quantized)
        return torch.stack([interpreter.run(b) for b in batches])

    reference = outputs(())
    scale = reference.abs().max().clamp_min(1e-30)

    def error(quantized: Collection[str]) -> float:
        return float((outputs(quantized) - reference).abs().max() / scale)

    if not candidates or error(candidates) <= max_error:
        return []
    alone = {name: error([name]) for name in candidates}
    fallback: list[str] = []
    for name in sorted(candidates, key=alone.__getitem__, reverse=True):
        fallback.append(name)
        if error([n for n in candidates if n not in fallback]) <= max_error:
            break
    return fallback


__all__ = ["DEFAULT_MAX_ERROR", "fake_quantize", "int8_fp32_fallback", "unified_layers"]
