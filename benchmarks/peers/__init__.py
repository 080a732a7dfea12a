"""Helpers of ``benchmarks/run.py`` and ``benchmarks/arm.py``: the per-engine worker, the eager model and
its exports, the LiteRT venv, the report, the peers counted on the emulated aarch64 device.

Kept apart from ``tvm_unify`` on purpose: the benchmark drives tvm-unify only through its CLI and the
files it writes, so it keeps working while the package's internals move.
"""

from __future__ import annotations

import subprocess


def last_line(proc: subprocess.CompletedProcess) -> str:
    """The last line a failed process printed (its error, for the tools used here), or its exit status."""
    lines = (proc.stderr or proc.stdout or "").strip().splitlines()
    return lines[-1][:300] if lines else f"exit status {proc.returncode}"
