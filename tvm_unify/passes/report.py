"""The compile report of ``LowerUnifiedBlocks``: one row per conv2d/linear layer, lowered or not and why."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LayerReport:
    """One conv2d/linear layer: what the pass found and did."""

    layer: str
    op: str
    weight_shape: tuple[int, ...]
    lowered: bool
    reason: str
    block: str = "-"
    sparsity: float | None = None
    bytes_dense: int = 0
    bytes_after: int = 0
    padding: float | None = None  # fraction of the blocked-ELL slots the kernel computes that are padding
    free_blocks: int = 0  # dense-valued blocks, computed by the free-block kernel
    free_padding: float | None = None  # the same fraction for the free blocks' ELL
    fp32_fallback: bool = False  # an int8 build keeps this layer's unified kernel in fp32 (too inexact in int8)


def _lowered_note(e: LayerReport) -> str:
    """The result column of a lowered layer: its free-block count and ELL padding (wasted slots), if any."""
    note = f"lowered with {e.free_blocks} free blocks" if e.free_blocks else "lowered"
    note += ", fp32 (int8 too inexact here)" if e.fp32_fallback else ""
    paddings = [f"{label} {p:.0%}" for label, p in (("ELL padding", e.padding), ("free ELL padding", e.free_padding))
                if p]
    return note + (f" ({', '.join(paddings)})" if paddings else "")


def report_table(entries: list[LayerReport]) -> str:
    """The compile report as a text table, one row per conv2d/linear layer."""
    header = (f"{'layer':28s} {'op':7s} {'weight':18s} {'block':9s} {'sparsity':>8s} {'KiB':>8s} {'KiB now':>8s}"
              "  result")
    lines = [header]
    for e in entries:
        sparsity = "-" if e.sparsity is None else f"{e.sparsity:.2f}"
        after = e.bytes_after if e.lowered else e.bytes_dense
        result = _lowered_note(e) if e.lowered else f"dense: {e.reason}"
        lines.append(f"{e.layer[:28]:28s} {e.op:7s} {'x'.join(map(str, e.weight_shape)):18s} {e.block:9s} "
                     f"{sparsity:>8s} {e.bytes_dense / 1024:8.1f} {after / 1024:8.1f}  {result}")
    lowered = [e for e in entries if e.lowered]
    before = sum(e.bytes_dense for e in entries)
    now = sum(e.bytes_after if e.lowered else e.bytes_dense for e in entries)
    lines.append(f"{len(lowered)}/{len(entries)} layers lowered; conv/linear weights {before / 1024:.1f} KiB -> "
                 f"{now / 1024:.1f} KiB")
    return "\n".join(lines)
