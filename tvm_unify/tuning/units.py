"""Costs on meta-schedule's scale: its database and cost model keep seconds (``run_secs``), so a runner
that counts instructions stores them at a nominal rate, and the logs turn them back."""

from __future__ import annotations

SECONDS_PER_INSTRUCTION = 1e-9  # nominal: 1 ns per instruction


def as_seconds(cost: float, unit: str) -> float:
    """A runner's cost (``unit``: "s" or "instructions") on meta-schedule's scale."""
    return cost * SECONDS_PER_INSTRUCTION if unit == "instructions" else cost


def from_seconds(seconds: float, unit: str) -> float:
    """A cost on meta-schedule's scale back in the runner's unit."""
    return seconds / SECONDS_PER_INSTRUCTION if unit == "instructions" else seconds


def cost_text(seconds: float, unit: str) -> str:
    """A cost on meta-schedule's scale as the runner measured it: microseconds, or k instructions."""
    if unit == "instructions":
        return f"{from_seconds(seconds, unit) / 1e3:.1f}k insn"
    return f"{seconds * 1e6:.1f} us"
