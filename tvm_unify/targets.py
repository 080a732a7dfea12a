"""Device presets: ``targets/NAME.json`` holds a TVM target dict plus what the tool needs around it.

A preset is looked up by name in the project's ``targets/`` folder, or given as a path to a JSON file of
the same shape, so users can describe their own board without touching the package.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tvm

from .errors import UserError

TARGETS_DIR = Path(__file__).resolve().parent.parent / "targets"


@dataclass(frozen=True)
class TargetPreset:
    """A TVM target plus its architecture, cross compiler and default RPC key."""

    name: str
    description: str
    target: dict[str, Any]
    arch: str
    cross_compiler: str | None
    rpc_key: str

    def tvm_target(self) -> tvm.target.Target:
        return tvm.target.Target(self.target)

    @property
    def is_host(self) -> bool:
        return self.cross_compiler is None


def _from_json(name: str, path: Path) -> TargetPreset:
    try:
        data = json.loads(path.read_text())
        preset = TargetPreset(
            name=name,
            description=data.get("description", ""),
            target=data["target"],
            arch=data["arch"],
            cross_compiler=data.get("cross_compiler"),
            rpc_key=data.get("rpc_key", name),
        )
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise UserError(f"bad target file {path}: {err!r} (needs 'target' and 'arch')") from None
    try:
        preset.tvm_target()
    except Exception as err:  # TVM raises its own error types for invalid target dicts
        raise UserError(f"bad TVM target in {path}: {str(err).strip().splitlines()[-1]}") from None
    return preset


def available_targets() -> list[str]:
    """Names of the bundled presets."""
    return sorted(p.stem for p in TARGETS_DIR.glob("*.json"))


def load_target(name_or_path: str | os.PathLike) -> TargetPreset:
    """Resolve a preset name (``arm``) or a JSON file path into a TargetPreset."""
    text = str(name_or_path)
    if text.endswith(".json") or os.sep in text:
        path = Path(text)
        if not path.is_file():
            raise UserError(f"target file not found: {path}")
        return _from_json(path.stem, path)
    path = TARGETS_DIR / f"{text}.json"
    if not path.is_file():
        raise UserError(f"unknown target {text!r} (choose from {', '.join(available_targets())}, "
                        "or give a path to a .json preset)")
    return _from_json(text, path)
