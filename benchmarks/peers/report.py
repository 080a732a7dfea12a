"""RESULTS.md and its PNG plots from the records of ``benchmarks/run.py``.

Ratios are the point: every number in one report comes from one run on one machine, so the summary
puts tvm-unify next to the best of the peers the project's goal names (ONNX Runtime, OpenVINO, LiteRT).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

GOAL_PEERS = ("ONNX Runtime", "OpenVINO", "LiteRT (XNNPACK)")
UNIFIED = "tvm-unify fp32"
FILES = {"PyTorch eager": "TorchScript .pt", "torch.compile": "TorchScript .pt", "ONNX Runtime": ".onnx",
         "OpenVINO": ".onnx", "LiteRT (XNNPACK)": ".tflite", "TVM dense": "TVM dense .so",
         "tvm-unify fp32": "tvm-unify fp32 .so", "tvm-unify int8": "tvm-unify int8 .so"}
MIB = 1 << 20


def ok(records: list[dict]) -> list[dict]:
    return [r for r in records if r["status"] == "ok"]


def best_peer(records: list[dict]) -> dict | None:
    """The fastest goal peer among one (model, variant, threads) group's successful records."""
    peers = [r for r in ok(records) if r["engine"] in GOAL_PEERS]
    return min(peers, key=lambda r: r["median_ms"]) if peers else None


def groups(records: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    """Records grouped by ``keys``, in first-seen order."""
    out: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        out[tuple(r[k] for k in keys)].append(r)
    return out


def summary_table(records: list[dict]) -> list[str]:
    """Per model, unified variant and thread count: tvm-unify vs the best goal peer."""
    lines = ["| model | variant | threads | tvm-unify fp32 ms | tvm-unify int8 ms | TVM dense ms | best peer | "
             "best peer ms | fp32 speed-up |", "|---|---|---|---|---|---|---|---|---|"]
    for (model, variant, threads), rs in groups(records, "model", "variant", "threads").items():
        if variant == "dense":
            continue
        by_engine = {r["engine"]: r for r in rs}
        cells = [latency(by_engine.get(e)) for e in (UNIFIED, "tvm-unify int8", "TVM dense")]
        peer = best_peer(rs)
        unified = by_engine.get(UNIFIED, {}).get("median_ms")
        speedup = f"{peer['median_ms'] / unified:.2f}x" if peer and unified else "-"
        peer_cells = [peer["engine"], f"{peer['median_ms']:.3f}"] if peer else ["-", "-"]
        lines.append(f"| {model} | {variant} | {threads} | {' | '.join(cells + peer_cells)} | {speedup} |")
    return lines


def latency(record: dict | None) -> str:
    """A record's median ms, FAILED, or - when the engine was not run."""
    if record is None:
        return "-"
    return f"{record['median_ms']:.3f}" if record["status"] == "ok" else "FAILED"


def rounds_note(policy: dict) -> str:
    """How ``--rounds`` repeated the measurements, for the policy line (nothing for one round)."""
    rounds = policy.get("rounds", 1)
    return "" if rounds == 1 else (f", in each of {rounds} rounds over all engines in turn (each engine's "
                                   "fastest round is reported; all rounds are in results.json)")


def model_table(records: list[dict], threads: list[int]) -> list[str]:
    """One row per (variant, engine): latency per thread count, file size, peak RSS, agreement."""
    head = " | ".join(f"{t} thr median / p90 ms" for t in threads)
    lines = [f"| variant | engine | {head} | file MiB | peak RSS MiB | max rel err | top-1 agree | CPU stolen |",
             "|---|---|" + "---|" * (len(threads) + 5)]
    for (variant, engine), rs in groups(records, "variant", "engine").items():
        by_threads = {r["threads"]: r for r in rs}
        cells = []
        for t in threads:
            r = by_threads.get(t)
            cells.append("-" if r is None else f"{r['median_ms']:.3f} / {r['p90_ms']:.3f}" if r["status"] == "ok"
                         else f"FAILED: {r['reason']}")
        last = by_threads[max(by_threads)]
        size = f"{last['size_bytes'] / MIB:.2f}" if "size_bytes" in last else "-"
        rss = f"{last['peak_rss_mib']:.0f}" if "peak_rss_mib" in last else "-"
        err = f"{last['max_rel_err']:.1e}" if "max_rel_err" in last else "-"
        agree = f"{last['top1_agreement']:.0%}" if "top1_agreement" in last else "-"
        steal = f"{last['steal_pct']:.0f}%" if "steal_pct" in last else "-"
        lines.append(f"| {variant} | {engine} | {' | '.join(cells)} | {size} | {rss} | {err} | {agree} | {steal} |")
    return lines


def plot_latency(records: list[dict], threads: int, path: Path) -> None:
    """Median latency vs sparsity, one panel per model, one line per runtime and block shape (dense at 0)."""
    models = list(groups(records, "model"))
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False)
    for ax, (model,) in zip(axes[0], models):
        rs = [r for r in ok(records) if r["model"] == model and r["threads"] == threads]
        dense = {r["engine"]: r["median_ms"] for r in rs if r["sparsity"] == 0}
        blocks = sorted({r["block"] for r in rs if r["block"]})
        for i, (engine,) in enumerate(groups(rs, "engine")):
            for block, style in zip(blocks, ("-", "--", ":")):
                pts = sorted((r["sparsity"], r["median_ms"]) for r in rs if r["engine"] == engine and r["block"] == block)
                pts = ([(0.0, dense[engine])] if engine in dense else []) + pts
                if pts:
                    ax.plot(*zip(*pts), style, marker="o", color=f"C{i}",
                            label=f"{engine}" + (f" {block}" if len(blocks) > 1 else ""))
        ax.set(title=f"{model} ({threads} threads)", xlabel="sparsity (0 = dense)", ylabel="median ms", yscale="log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sizes(records: list[dict], path: Path) -> None:
    """File size of what each runtime loads, per model and variant (log scale)."""
    models = list(groups(records, "model"))
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False)
    for ax, (model,) in zip(axes[0], models):
        sizes: dict[str, dict[str, float]] = defaultdict(dict)  # file kind -> variant -> MiB
        variants = list(groups([r for r in records if r["model"] == model], "variant"))
        for r in records:
            if r["model"] == model and "size_bytes" in r:
                sizes[FILES[r["engine"]]][r["variant"]] = r["size_bytes"] / MIB
        width = 0.8 / max(len(sizes), 1)
        for i, (kind, per_variant) in enumerate(sizes.items()):
            xs = [j + i * width for j, (v,) in enumerate(variants) if v in per_variant]
            ax.bar(xs, [per_variant[v] for (v,) in variants if v in per_variant], width, label=kind, color=f"C{i}")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(variants))], [v for (v,) in variants], fontsize=8)
        ax.set(title=model, ylabel="MiB on disk", yscale="log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def header(data: dict) -> list[str]:
    m = data["machine"]
    policy = data["policy"]
    lines = [
        "# Peer benchmark: tvm-unify vs PyTorch, ONNX Runtime, OpenVINO, LiteRT", "",
        f"Generated by `{data['command']}` (`benchmarks/run.py`; re-run it to refresh this file).", "",
        f"- **Machine**: {m['cpu']} ({', '.join(m['vector_extensions']) or 'no AVX2'}), {m['cores']} cores, "
        f"{m['os']}, Python {m['python']}; tvm-unify commit {m['commit']}; {m['date']}.",
        "- **Versions**: " + ", ".join(f"{k} {v}" for k, v in data["versions"].items()) + ".",
        f"- **Policy**: batch 1, one process per engine and thread count, one at a time; {policy['warmup']} "
        f"warm-up calls, then {policy['repeat']} timed single calls (median, p90) on the same fixed-seed "
        f"input{rounds_note(policy)}; peak RSS is the worker process's `VmHWM`. Every engine is first checked on "
        f"{policy['check_inputs']} random inputs against PyTorch eager (max abs error relative to PyTorch's "
        f"largest output: fp32 <= {policy['fp32_tolerance']:g}, int8 <= {policy['int8_tolerance']:g}); one "
        "that disagrees is FAILED and not timed. *CPU stolen*: the share of this VM's CPU time the "
        "hypervisor gave other guests while the engine ran (`/proc/stat` steal); TVM's spinning thread pool "
        "slows down most when it is high, so compare rows measured at similar steal.",
        "- **Models**: `tvm-unify export-builtin` (BatchNorm-calibrated, no training) and `tvm-unify unify "
        "--one-shot` (no data, so no accuracy: agreement with PyTorch instead). Peers run the unified weights "
        "as dense tensors; TVM dense is `tvm-unify compile --dense` of the same file.",
    ]
    if data.get("note"):
        lines.append(f"- **Note**: {data['note']}")
    lines += [f"- **Skipped**: {k}: {v}" for k, v in data["skipped"].items()]
    return lines


def write_report(data: dict, out: Path) -> None:
    """OUT/RESULTS.md plus OUT/results/latency-tN.png and sizes.png."""
    records = data["results"]
    threads = sorted({r["threads"] for r in records})
    results = out / "results"
    lines = header(data) + ["", "## tvm-unify vs the best of ONNX Runtime, OpenVINO and LiteRT", "",
                            *summary_table(records), ""]
    for t in threads:
        plot_latency(records, t, results / f"latency-t{t}.png")
        lines.append(f"![latency vs sparsity, {t} threads](results/latency-t{t}.png)")
    plot_sizes(records, results / "sizes.png")
    lines += ["", "![file sizes](results/sizes.png)", ""]
    for (model,), rs in groups(records, "model").items():
        lines += [f"## {model}", "", *model_table(rs, threads), ""]
    (out / "RESULTS.md").write_text("\n".join(lines))
