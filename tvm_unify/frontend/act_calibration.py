"""int8 activation-scale calibration from sample inputs (static scales for ``LowerUnifiedBlocks``).

Without calibration each int8 kernel takes ``max|x| / 127`` of its input on every call: an extra pass
over the activations, and a scale that changes with the input. Calibration fixes each layer's scale to
``max|x| / 127`` over representative samples, keyed by the module path the lowering pass uses.

The samples run through the model's ExportedProgram in PyTorch with a ``torch.fx.Interpreter``: forward
hooks do not work on TorchScript (scripted modules refuse them, traced ones never call them), and the
nodes of a converted program carry no usable ``nn_module_stack``. A conv/linear node is named the way
the pass names it: by the fingerprint of its weight tensor, looked up in ``layer_names``.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import fx

from ..errors import UserError
from .importer import ImportedModel, torchscript_to_exported_program
from .naming import layer_names as module_layer_names
from ..format import weight_fingerprint

# The aten ops a conv2d / linear layer becomes in a converted or exported program (traced TorchScript
# gives ``convolution``, scripted and eager give ``conv2d``); the input is args[0], the weight args[1].
_WEIGHTED_OPS = {torch.ops.aten.conv2d.default, torch.ops.aten.convolution.default,
                 torch.ops.aten._convolution.default, torch.ops.aten.linear.default}
_MIN_ABS_MAX = 1e-30  # the int8 kernels' own floor for max|x|: a scale is never 0


class LayerInputs(fx.Interpreter):
    """Runs a graph, handing the input of every conv/linear node whose weight ``names`` knows to
    :meth:`layer_input` (by module path), which may observe or replace it."""

    def __init__(self, module: fx.GraphModule, names: Mapping[str, str]) -> None:
        super().__init__(module)
        self.names = names
        self.layer_of: dict[fx.Node, str | None] = {}  # fingerprinting once per node, not per sample

    def layer_input(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return x

    def run_node(self, node: fx.Node) -> Any:
        if node.op == "call_function" and node.target in _WEIGHTED_OPS:
            (x, weight, *rest), kwargs = self.fetch_args_kwargs_from_env(node)
            if node not in self.layer_of:
                self.layer_of[node] = self.names.get(weight_fingerprint(weight.detach().numpy()))
            name = self.layer_of[node]
            if name is not None:
                return node.target(self.layer_input(name, x), weight, *rest, **kwargs)
        return super().run_node(node)


class _InputAbsMax(LayerInputs):
    """Records max |input| of every named conv/linear layer."""

    def __init__(self, module: fx.GraphModule, names: Mapping[str, str]) -> None:
        super().__init__(module, names)
        self.abs_max: dict[str, float] = {}

    def layer_input(self, name: str, x: torch.Tensor) -> torch.Tensor:
        self.abs_max[name] = max(self.abs_max.get(name, 0.0), float(x.detach().abs().max()))
        return x


def sample_batches(samples: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """``samples`` as model inputs of ``input_shape`` stacked on a leading axis.

    Accepts ``(N, *input_shape)``, or inputs stacked along the batch axis, ``(k * batch, *input_shape[1:])``
    (a plain data set for a batch-1 model); anything else is a ``UserError``."""
    shape, rank = tuple(samples.shape), len(input_shape)
    stacked = samples.ndim == rank + 1 and shape[1:] == input_shape and shape[0] > 0
    along_batch = samples.ndim == rank and shape[1:] == input_shape[1:] and shape[0] % input_shape[0] == 0
    if not (stacked or along_batch) or samples.size == 0:
        want = ",".join(map(str, input_shape))
        raise UserError(f"calibration array of shape {','.join(map(str, shape))} does not fit the model input "
                        f"{want}: expected N,{want} or a multiple of {input_shape[0]} along the first axis")
    if not np.issubdtype(samples.dtype, np.number) or not np.isfinite(samples).all():
        raise UserError("calibration array must hold finite numbers")
    return samples.astype(np.float32).reshape((-1, *input_shape))


def program_of(model: ImportedModel | torch.nn.Module, input_shape: tuple[int, ...]) -> torch.export.ExportedProgram:
    if isinstance(model, ImportedModel):
        return model.program or torchscript_to_exported_program(model.torch_module, input_shape)
    if isinstance(model, torch.jit.ScriptModule):
        return torchscript_to_exported_program(model, input_shape)
    return torch.export.export(model.eval(), (torch.zeros(input_shape),))


@torch.no_grad()
def calibrate_act_scales(model: ImportedModel | torch.nn.Module, samples: np.ndarray,
                         layer_names: Mapping[str, str] | None = None) -> dict[str, float]:
    """Module path -> ``max|input| / 127`` over ``samples`` for every conv2d/linear layer of ``model``.

    ``model`` is an ``ImportedModel`` (samples as ``sample_batches`` accepts for its input shape) or a
    TorchScript / plain ``nn.Module`` (samples ``(N, *input_shape)``). ``layer_names`` maps weight
    fingerprint -> module path, as ``LowerUnifiedBlocks`` takes it (default: from the model's weights)."""
    if isinstance(model, ImportedModel):
        input_shape = model.input_shape
        torch_module: torch.nn.Module = model.torch_module
    else:
        input_shape, torch_module = tuple(samples.shape[1:]), model
    batches = sample_batches(np.asarray(samples), input_shape)
    names = module_layer_names(torch_module) if layer_names is None else layer_names
    interpreter = _InputAbsMax(program_of(model, input_shape).module(), names)
    for batch in batches:
        interpreter.run(torch.from_numpy(batch))
    return {name: max(m, _MIN_ABS_MAX) / 127 for name, m in interpreter.abs_max.items()}


__all__ = ["calibrate_act_scales", "sample_batches"]
