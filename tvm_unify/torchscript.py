"""TorchScript files with tvm-unify metadata (input shape, block spec) stored inside them.

The metadata travels in the file's ``_extra_files`` under ``tvm_unify.json``, so a model.pt is
self-describing: the compiler reads the input shape and the intended block structure from it.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any

import torch
from torch import nn

from .errors import UserError, first_line
from .fileio import atomic_output, require_file

METADATA_FILE = "tvm_unify.json"


def save_torchscript(
    model: nn.Module, path: str | os.PathLike, input_shape: tuple[int, ...], metadata: dict[str, Any] | None = None
) -> None:
    """Trace ``model`` (in eval mode) on a zero input of ``input_shape`` and save it with metadata."""
    model = model.eval()
    example = torch.zeros(input_shape)
    with torch.no_grad():
        scripted = model if isinstance(model, torch.jit.ScriptModule) else torch.jit.trace(model, example)
    meta = dict(metadata or {})
    meta["input_shape"] = list(input_shape)
    with atomic_output(path) as tmp:
        torch.jit.save(scripted, str(tmp), _extra_files={METADATA_FILE: json.dumps(meta, indent=1)})


def load_torchscript(path: str | os.PathLike) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """Load a TorchScript file and its tvm-unify metadata ({} when the file carries none)."""
    p = require_file(path, "model file")
    if not zipfile.is_zipfile(p):
        raise UserError(f"not a TorchScript file (not a zip archive): {p}")
    extra = {METADATA_FILE: ""}
    try:
        module = torch.jit.load(str(p), map_location="cpu", _extra_files=extra)
    except RuntimeError as err:
        raise UserError(f"not a TorchScript file: {p} ({first_line(err)})") from None
    try:
        metadata = json.loads(extra[METADATA_FILE]) if extra[METADATA_FILE] else {}
    except json.JSONDecodeError as err:
        raise UserError(f"corrupt {METADATA_FILE} metadata in {p}: {err}") from None
    return module.eval(), metadata
