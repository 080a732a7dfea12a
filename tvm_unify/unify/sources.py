"""Where the model to unify comes from: a TorchScript file, a built-in name, or ``module.path:Factory``.

A user factory is imported from the working directory (as ``python -c`` would), called with no
arguments and must return an ``nn.Module``; an optional state dict (``weights``) loads into it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.user import call_factory
from ..errors import UserError
from ..models import BUILTIN_MODELS, get_builtin
from ..torchscript import load_torchscript


@dataclass
class ModelSource:
    """A loaded model, its batch-1 input shape and what is known about it."""

    model: nn.Module
    input_shape: tuple[int, ...]
    name: str
    scripted: bool = False
    trained: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)


def load_source(
    spec: str, input_shape: tuple[int, ...] | None = None, weights: str | os.PathLike | None = None
) -> ModelSource:
    """Resolve the MODEL argument of ``tvm-unify unify`` (see the module docstring)."""
    if Path(spec).is_file():
        if weights:
            raise UserError("weights apply to built-in and module:Factory models, not TorchScript files")
        module, metadata = load_torchscript(spec)
        shape = input_shape or tuple(metadata.get("input_shape") or ())
        if not shape:
            raise UserError(f"{spec} records no input shape: give the input shape")
        metadata = {k: v for k, v in metadata.items() if k not in ("unify", "input_shape")}
        metadata.setdefault("model", Path(spec).name)
        return ModelSource(module, tuple(shape), metadata["model"], scripted=True, trained=True, metadata=metadata)
    if spec in BUILTIN_MODELS:
        builtin = get_builtin(spec)
        source = ModelSource(builtin.factory(), input_shape or builtin.input_shape, spec)
    elif ":" in spec:
        model = _call_factory(spec)
        shape = input_shape or getattr(model, "input_shape", None)
        if not shape:
            raise UserError(f"{spec}: give the input shape (or the model an `input_shape` attribute)")
        source = ModelSource(model, tuple(shape), spec)
    else:
        raise UserError(f"unknown model {spec!r}: not a file, a built-in ({', '.join(BUILTIN_MODELS)}) "
                        "or module.path:Factory")
    source.metadata = {"model": source.name}
    if weights:
        _load_weights(source.model, weights)
        source.trained = True
    return source


def _call_factory(spec: str) -> nn.Module:
    model = call_factory(spec)
    if not isinstance(model, nn.Module):
        raise UserError(f"{spec}() returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    if not Path(path).is_file():
        raise UserError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file; the user needs one line
        raise UserError(f"cannot read weights {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(state, dict):
        raise UserError(f"weights file {path} does not hold a state dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise UserError(f"weights {path} do not fit the model: {' '.join(str(err).split())[:300]}") from None
