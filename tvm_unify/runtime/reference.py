"""Checking an output against a reference: the one comparison that ``run``, ``bench`` and the demo use.

The error is the max absolute difference, judged relative to the reference's largest magnitude, so one
tolerance fits outputs of any scale. A reference that is all zeros gets a tiny floor instead of zero,
so only an exact match passes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..fileio import load_npy

SCALE_FLOOR = 1e-12


@dataclass(frozen=True)
class Agreement:
    """How far an output is from its reference, and whether that is within tolerance."""

    max_abs_err: float
    allowed: float

    @property
    def ok(self) -> bool:
        return self.max_abs_err <= self.allowed


def load_reference(path: str | Path | None) -> np.ndarray | None:
    """The reference output array (.npy) a run is checked against, if one was given."""
    return None if path is None else load_npy(path, "reference output")


def compare(output: np.ndarray, reference: np.ndarray, rtol: float, what: str) -> Agreement:
    """Max abs error of ``output`` against ``reference``, allowed ``rtol`` times the reference's scale.

    ``what`` names the output in the one-line error a shape mismatch raises (library and device)."""
    if output.shape != reference.shape:
        raise UserError(f"{what}: output shape {output.shape} differs from the reference {reference.shape}")
    err = float(np.abs(output.astype(np.float64) - reference).max()) if output.size else 0.0
    scale = max(float(np.abs(reference).max()) if reference.size else 0.0, SCALE_FLOOR)
    return Agreement(err, rtol * scale)
