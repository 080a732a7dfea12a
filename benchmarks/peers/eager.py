"""The eager ``nn.Module`` behind a TorchScript file written by ``tvm-unify`` (export-builtin / unify),
and its exports for the peers.

Converters (torch.onnx dynamo, torch.export for LiteRT) and torch.compile want an eager module, not
TorchScript; the built-in model definitions are the one stable part of the package we may import.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

METADATA = "tvm_unify.json"


def metadata(path: Path) -> dict:
    """The ``tvm_unify.json`` extra file of a tvm-unify TorchScript file (model name, input shape, spec)."""
    extra = {METADATA: ""}
    torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra[METADATA])


def eager_model(path: Path, name: str) -> nn.Module:
    """The built-in model ``name`` in eval mode with the weights (and BN statistics) of ``path``."""
    from tvm_unify.models import get_builtin

    model = get_builtin(name).factory()
    model.load_state_dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    return model.eval()


def export_onnx(model: nn.Module, x: torch.Tensor, path: Path) -> None:
    """The torch.onnx dynamo export ONNX Runtime and OpenVINO load."""
    torch.onnx.export(model, (x,), dynamo=True, verbose=False).save(str(path))


def export_program(model: nn.Module, x: torch.Tensor, path: Path) -> None:
    """A torch.export ExportedProgram (.pt2): how the module reaches the LiteRT venv, which has no tvm-unify."""
    torch.export.save(torch.export.export(model, (x,)), str(path))
