"""TorchScript -> ExportedProgram -> Relax.

TVM 0.27 has no TorchScript frontend, so we go through torch's TS2EPConverter and TVM's
``from_exported_program``. The converter re-exports with ``Dim.AUTO`` on every input dimension, which
makes torch.export's constraint solver fail on the common ``out.view(out.size(0), -1)`` flatten
(ResNet, MobileNetV2...); we re-export with static shapes instead, which every built-in model needs.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import tvm
from torch._export.converter import TS2EPConverter
from tvm.relax.frontend.torch import from_exported_program

from ..errors import UserError, first_line
from ..torchscript import load_torchscript


@dataclass
class ImportedModel:
    """A TorchScript model imported into Relax, with weights bound as constants."""

    mod: tvm.IRModule
    input_shape: tuple[int, ...]
    metadata: dict[str, Any]
    torch_module: torch.jit.ScriptModule
    program: torch.export.ExportedProgram | None = None  # kept to run calibration samples in PyTorch


def parse_shape(text: str) -> tuple[int, ...]:
    """Parse ``1,3,32,32`` (or ``1x3x32x32``) into a tuple of positive ints."""
    parts = re.split(r"[,x]", text.strip())
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise UserError(f"bad input shape {text!r}: expected comma-separated integers like 1,3,32,32") from None
    if not dims or any(d <= 0 for d in dims):
        raise UserError(f"bad input shape {text!r}: every dimension must be a positive integer")
    return dims


@contextlib.contextmanager
def _static_reexport() -> Iterator[None]:
    """Make TS2EPConverter's retrace use static shapes (``dynamic_shapes=None``)."""
    real_export = torch.export._trace._export

    def static_export(*args: Any, **kwargs: Any) -> Any:
        kwargs["dynamic_shapes"] = None
        return real_export(*args, **kwargs)

    torch.export._trace._export = static_export
    try:
        yield
    finally:
        torch.export._trace._export = real_export


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    """Hide torch.export's per-buffer and deprecation warnings: they are not actionable for users."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


def torchscript_to_exported_program(
    module: torch.jit.ScriptModule, input_shape: tuple[int, ...]
) -> torch.export.ExportedProgram:
    """Convert a loaded TorchScript module to a static-shape ExportedProgram."""
    sample = (torch.randn(input_shape),)
    try:
        with _static_reexport(), torch.no_grad(), _quiet_torch():
            return TS2EPConverter(module, sample).convert()
    except Exception as err:  # torch raises many types here; all mean "cannot convert this model"
        raise UserError(f"cannot convert TorchScript to an ExportedProgram: {first_line(err)}") from None



def _layer_of(ep: torch.export.ExportedProgram, op_name: str) -> str:
    """The module path of the first node calling ``op_name`` (e.g. ``aten.foo.default``)."""
    for node in ep.graph.nodes:
        if node.op == "call_function" and str(node.target).endswith(op_name.removeprefix("aten.")):
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                return list(stack.values())[-1][0] or "<top level>"
            return node.name
    return "<unknown layer>"


def exported_program_to_relax(ep: torch.export.ExportedProgram) -> tvm.IRModule:
    """Import an ExportedProgram into Relax, naming the op and layer if the importer cannot."""
    try:
        with _quiet_torch():
            return from_exported_program(ep, unwrap_unit_return_tuple=True)
    except (AssertionError, ValueError, KeyError, NotImplementedError, RuntimeError) as err:
        message = first_line(err)
        unsupported = re.search(r"Unsupported function types? \[?'?([\w.]+)", message)
        if unsupported:
            op = unsupported.group(1)
            raise UserError(f"unsupported op {op} in layer {_layer_of(ep, op)}") from None
        raise UserError(f"cannot import the model into TVM Relax: {message}") from None


def import_torchscript(path: str | os.PathLike, input_shape: tuple[int, ...] | None = None) -> ImportedModel:
    """Load ``path`` and import it into Relax; the input shape comes from the argument or the file."""
    module, metadata = load_torchscript(path)
    if input_shape is None:
        if "input_shape" not in metadata:
            raise UserError(f"{path} carries no input shape: pass --input-shape, e.g. 1,3,32,32")
        input_shape = tuple(int(d) for d in metadata["input_shape"])
    try:
        with torch.no_grad():
            module(torch.zeros(input_shape))
    except RuntimeError as err:
        raise UserError(f"input shape {','.join(map(str, input_shape))} does not fit the model: "
                        f"{first_line(err)}") from None
    ep = torchscript_to_exported_program(module, input_shape)
    mod = exported_program_to_relax(ep)
    return ImportedModel(mod=mod, input_shape=input_shape, metadata=metadata, torch_module=module, program=ep)


__all__ = ["ImportedModel", "import_torchscript", "parse_shape"]
