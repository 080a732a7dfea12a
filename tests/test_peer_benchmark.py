"""`benchmarks/run.py --quick`: every engine produces a number and agrees with PyTorch; the demo's
peer timings run in child processes.

The CI guard for the peer installs (the `bench` extra and the LiteRT venv the script creates): a peer
that fails to install, convert or run, or that disagrees with PyTorch, fails this test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENGINES = {"PyTorch eager", "torch.compile", "ONNX Runtime", "OpenVINO", "LiteRT (XNNPACK)", "TVM dense",
           "tvm-unify fp32", "tvm-unify int8"}


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the first run creates the LiteRT venv (~2 min) and compiles digits-cnn thrice
def test_quick_peer_benchmark(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(tmp_path),
                           "--work", str(tmp_path / "work")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    records = results["results"]
    assert {r["engine"] for r in records} == ENGINES
    for r in records:
        where = f"{r['engine']} on {r['model']} {r['variant']}"
        assert r["status"] == "ok", f"{where}: {r.get('reason')}"
        assert r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"] and r["peak_rss_mib"] > 0, where
        assert r["agrees"] and r["size_bytes"] > 0, where
    assert {"litert-torch", "onnxruntime", "openvino", "apache-tvm"} <= set(results["versions"])
    assert "## digits-cnn" in (tmp_path / "RESULTS.md").read_text()
    assert (tmp_path / "results" / "latency-t2.png").stat().st_size > 0


def test_demo_peers_run_outside_the_calling_process(tmp_path):
    """The demo's peer latencies come from child processes: OpenVINO loaded into the caller's process
    (its TBB) hides Intel's fp16 OpenCL platform from TVM for the rest of that process."""
    import numpy as np
    import torch

    from tvm_unify.runtime.peers import installed_peers, peer_latencies

    if not installed_peers():
        pytest.skip("no peer runtime installed (the bench extra)")
    model = torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()).eval())
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    found = peer_latencies(model, x, tmp_path)
    assert set(found) == set(installed_peers()) and all(ms > 0 for ms in found.values())
    assert "openvino" not in sys.modules and "onnxruntime" not in sys.modules
