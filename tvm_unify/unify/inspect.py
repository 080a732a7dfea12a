"""``tvm-unify inspect``: per-layer block counts and storage of a unified TorchScript model.

Counts are re-measured on the file's weights, so the table shows what a compiler would find, and a
layer whose weights disagree with its recorded spec is flagged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from ..torchscript import load_torchscript
from .export import block_counts_of, read_unify_metadata, storage_bits
from .spec import LayerSpec


@dataclass
class LayerRow:
    name: str
    shape: tuple[int, ...]
    spec: LayerSpec
    counts: dict[str, int]
    storage_bits: int
    dense_bits: int
    matches_metadata: bool


@dataclass
class ModelSummary:
    """Per-layer rows plus whole-model storage (every float parameter and buffer at 32 bits if dense)."""

    rows: list[LayerRow]
    model_bits: int
    model_dense_bits: int
    dense: dict[str, str] = field(default_factory=dict)  # layers the policy left dense, and why

    @property
    def constrained_bits(self) -> int:
        return sum(r.storage_bits for r in self.rows)

    @property
    def constrained_dense_bits(self) -> int:
        return sum(r.dense_bits for r in self.rows)


def summarize(path: str | os.PathLike) -> ModelSummary:
    """Measure every constrained layer of a unified TorchScript file against its metadata."""
    module, metadata = load_torchscript(path)
    records = read_unify_metadata(metadata, path)
    state = module.state_dict()
    rows = []
    for rec in records:
        spec = LayerSpec(tuple(rec["block"]), rec["target_sparsity"], rec["target_unified"], rec["layout"])
        weight = state[rec["param"]]
        counts = block_counts_of(weight, spec)
        shape = tuple(weight.shape)
        rows.append(LayerRow(rec["name"], shape, spec, counts, storage_bits(counts, spec, shape),
                             32 * weight.numel(), counts == rec["blocks"]))
    dense = sum(32 * t.numel() for t in state.values() if torch.is_floating_point(t))
    constrained_dense = sum(r.dense_bits for r in rows)
    return ModelSummary(rows, dense - constrained_dense + sum(r.storage_bits for r in rows), dense,
                        dict(metadata["unify"].get("dense", {})))


def format_summary(summary: ModelSummary) -> str:
    """The per-layer table and the whole-model figures, as printed by ``tvm-unify inspect``."""
    header = (f"{'layer':24s} {'weight':>14s} {'block':>5s} {'layout':>6s} {'blocks':>7s} {'pruned':>7s} "
              f"{'unified':>7s} {'free':>6s} {'bits/w':>6s} {'KiB':>8s} {'fp32 KiB':>9s} {'ratio':>6s}")
    lines = [header, "-" * len(header)]
    for r in summary.rows:
        c = r.counts
        flag = "" if r.matches_metadata else "  (differs from recorded spec)"
        lines.append(
            f"{r.name:24s} {'x'.join(map(str, r.shape)):>14s} {'x'.join(map(str, r.spec.block)):>5s} "
            f"{r.spec.layout:>6s} {c['total']:7d} {c['pruned']:7d} {c['unified']:7d} {c['free']:6d} "
            f"{r.storage_bits / (r.dense_bits / 32):6.2f} {_kib(r.storage_bits):8.1f} {_kib(r.dense_bits):9.1f} "
            f"{r.dense_bits / r.storage_bits:5.1f}x{flag}"
        )
    lines.extend(f"kept dense: {reason}" for reason in summary.dense.values())
    lines.append(
        f"constrained layers: {_kib(summary.constrained_bits):.1f} KiB vs {_kib(summary.constrained_dense_bits):.1f} "
        f"KiB fp32 dense ({summary.constrained_dense_bits / summary.constrained_bits:.1f}x smaller)"
    )
    lines.append(
        f"whole model (all parameters and buffers): {_kib(summary.model_bits):.1f} KiB vs "
        f"{_kib(summary.model_dense_bits):.1f} KiB fp32 dense ({summary.model_dense_bits / summary.model_bits:.1f}x "
        "smaller)"
    )
    return "\n".join(lines)


def _kib(bits: int) -> float:
    return bits / 8 / 1024
