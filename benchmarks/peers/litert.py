"""LiteRT: a cached venv for the ``litert-torch`` converter and ``ai-edge-litert`` runtime, and the
conversion run inside it.

litert-torch pulls jax, transformers and friends (about 2 GB with torch), so it lives in its own venv under
``~/.cache/tvm-unify/bench-venvs/litert-<hash>``, keyed by the pins, Python and torch version. It gets
the same torch as the main venv, installed first (``torch==X`` is the spec that resolves to the local CPU
build), so nothing pulls a CUDA build and the ExportedProgram (.pt2) written by the main venv loads.

    python -m peers.litert MODEL.pt2 INPUTS.npy OUT.tflite     # inside the LiteRT venv
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from peers import last_line

PINS = ("litert-torch==0.10.0", "ai-edge-litert==2.3.0")
VENV_ROOT = Path.home() / ".cache" / "tvm-unify" / "bench-venvs"
READY = "ready"  # written last: a venv without it was interrupted and is rebuilt


def venv_dir(torch_version: str) -> Path:
    """Where the venv for these pins, this Python and ``torch_version`` lives."""
    key = "|".join([*PINS, torch_version, sys.version.split()[0]])
    return VENV_ROOT / f"litert-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def ensure_venv(torch_version: str, log: Path) -> Path:
    """The LiteRT venv's python, creating the venv first when it is missing or incomplete
    (pip's output goes to ``log``; about 1.5 min on 2 cores with a warm pip cache)."""
    root = venv_dir(torch_version)
    python = root / "bin" / "python"
    if (root / READY).exists():
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(root)], check=True)
    with log.open("a") as out:
        for spec in ([f"torch=={torch_version}"], list(PINS)):
            subprocess.run([str(python), "-m", "pip", "install", "--quiet", *spec],
                           check=True, stdout=out, stderr=subprocess.STDOUT)
    (root / READY).write_text(" ".join(PINS))
    return python


def convert_in_venv(python: Path, program: Path, inputs: Path, output: Path, env: dict[str, str]) -> None:
    """Run ``convert`` in the LiteRT venv's ``python`` (``env`` puts ``peers`` on its path); its last
    error line becomes the RuntimeError's message."""
    proc = subprocess.run([str(python), "-m", "peers.litert", str(program), str(inputs), str(output)],
                          capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(last_line(proc))


def convert(program: Path, inputs: Path, output: Path) -> None:
    """litert-torch conversion of a saved ExportedProgram, traced on the first check input."""
    import litert_torch
    import numpy as np
    import torch

    x = torch.from_numpy(np.load(inputs)[0])
    litert_torch.convert(torch.export.load(str(program)).module(), (x,)).export(str(output))


if __name__ == "__main__":
    convert(*map(Path, sys.argv[1:4]))
