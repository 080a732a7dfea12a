"""The demo's final report: the dense and the unified build of one model side by side (accuracy,
weight storage, library size, host latency, emulated-ARM instruction counts) and the best installed
peer runtime's host latency on the unified model, as a table, markdown, PNG and JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .fileio import atomic_output


@dataclass
class Build:
    """One side of the comparison."""

    name: str
    accuracy: float | None
    weight_kib: float
    library_kib: float
    host_ms: float
    arm_instructions: int | None = None


@dataclass
class Comparison:
    """Dense vs unified, plus the peers' host latencies (ms) on the unified model."""

    model: str
    dense: Build
    unified: Build
    peers: dict[str, float] = field(default_factory=dict)

    @property
    def best_peer(self) -> tuple[str, float] | None:
        return min(self.peers.items(), key=lambda item: item[1]) if self.peers else None

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(what, dense, unified, unified vs dense) rows."""
        d, u = self.dense, self.unified
        gained = "-" if d.accuracy is None or u.accuracy is None else f"{(u.accuracy - d.accuracy) * 100:+.2f} points"
        rows = [
            ("accuracy", _pct(d.accuracy), _pct(u.accuracy), gained),
            ("weight storage (KiB)", f"{d.weight_kib:.1f}", f"{u.weight_kib:.1f}",
             f"{d.weight_kib / u.weight_kib:.1f}x smaller"),
            (".so size (KiB)", f"{d.library_kib:.0f}", f"{u.library_kib:.0f}",
             f"{d.library_kib / u.library_kib:.1f}x smaller"),
            ("host latency (ms)", f"{d.host_ms:.3f}", f"{u.host_ms:.3f}", f"{d.host_ms / u.host_ms:.2f}x faster"),
        ]
        if d.arm_instructions and u.arm_instructions:
            rows.append(("emulated ARM instructions / call", f"{d.arm_instructions:,}", f"{u.arm_instructions:,}",
                         f"{d.arm_instructions / u.arm_instructions:.2f}x fewer"))
        best = self.best_peer
        if best:
            faster = (f"unified {best[1] / u.host_ms:.2f}x faster" if best[1] >= u.host_ms
                      else f"{best[0]} {u.host_ms / best[1]:.2f}x faster")
            rows.append((f"best peer host latency ({best[0]}, ms)", "-", f"{best[1]:.3f}", faster))
        return rows


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def format_comparison(comparison: Comparison) -> str:
    """The comparison as a text table."""
    rows = [("", "dense", "unified", "unified vs dense"), *comparison.rows()]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    if not comparison.peers:
        lines.append("(no peer runtime installed: pip install onnxruntime openvino onnx to see the best peer)")
    return "\n".join(lines)


def write_comparison(comparison: Comparison, out: Path) -> list[Path]:
    """``demo-report.md`` with the table and ``demo-report.png`` (bars of each metric, dense = 1), and
    ``demo-report.json``; returns the paths."""
    md, png, js = out / "demo-report.md", out / "demo-report.png", out / "demo-report.json"
    _plot(comparison, png)
    lines = [f"# tvm-unify demo: {comparison.model}, dense vs unified", "",
             "| | dense | unified | unified vs dense |", "|---|---|---|---|",
             *[f"| {' | '.join(row)} |" for row in comparison.rows()], "",
             "Emulated ARM instruction counts are exact and repeatable; emulated wall time is not ARM time.",
             "", f"![dense vs unified]({png.name})", ""]
    with atomic_output(md) as tmp:
        tmp.write_text("\n".join(lines))
    with atomic_output(js) as tmp:
        tmp.write_text(json.dumps(asdict(comparison), indent=1) + "\n")
    return [md, png, js]


def _plot(comparison: Comparison, path: Path) -> None:
    """Unified relative to dense (dense = 1) for storage, library size, latency and instructions; the
    best peer's latency relative to the dense build too."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d, u = comparison.dense, comparison.unified
    bars = {"weights": u.weight_kib / d.weight_kib, ".so": u.library_kib / d.library_kib,
            "host latency": u.host_ms / d.host_ms}
    if d.arm_instructions and u.arm_instructions:
        bars["ARM instructions"] = u.arm_instructions / d.arm_instructions
    best = comparison.best_peer
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(list(bars), list(bars.values()), color="tab:green", label="unified")
    ax.axhline(1.0, color="gray", linestyle="--", label="dense = 1")
    if best:
        ax.axhline(best[1] / d.host_ms, color="tab:red", linestyle=":", label=f"{best[0]} latency")
    ax.set_ylabel("relative to dense (lower is better)")
    ax.set_title(f"{comparison.model}: unified vs dense")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
