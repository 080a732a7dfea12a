"""Peers on the emulated device's counter (``benchmarks/peers/emulated.py``, used by ``benchmarks/arm.py``):
ONNX Runtime's aarch64 wheel runs a tiny model inside the emulated root, agrees with PyTorch, and one
inference is counted exactly the way TVM builds are (marker syscalls, the qemu plugin), on the calling
thread only and stable from one run to the next.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.slow
@pytest.mark.timeout(600)  # the first run installs the aarch64 peer wheels into the device root (~30 s)
def test_onnxruntime_counted_on_the_emulated_device(tmp_path):
    pytest.importorskip("onnxscript", reason="the ONNX export needs the bench extra")
    sys.path.insert(0, str(BENCH))
    try:
        from peers.eager import export_onnx
        from peers.emulated import count_peer
    finally:
        sys.path.remove(str(BENCH))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 6 * 6, 10)).eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        reference = model(x).numpy()
    export_onnx(model, x, tmp_path / "tiny.onnx")
    first, second = (count_peer("onnxruntime", tmp_path / "tiny.onnx", x.numpy(), reference, log=print)
                     for _ in range(2))
    for counts in (first, second):
        assert counts["rel_err"] < 1e-5
        assert counts["library"].startswith("onnxruntime_pybind11_state")
        assert 0 < counts["in_library"] < counts["total"]
        assert counts["peer_threads_cpu_s"] == 0  # one thread: the count holds the whole inference
    # exact up to ONNX Runtime's own address-dependent bookkeeping (hash tables of pointers: 65 of 94k seen)
    assert abs(first["in_library"] - second["in_library"]) <= 0.005 * first["in_library"]
    assert abs(first["total"] - second["total"]) <= 0.02 * first["total"]
