"""The latency of the runtimes users would pick instead, on the same model, when they are installed:
ONNX Runtime and OpenVINO on an ONNX export of the TorchScript file. Optional (the ``bench`` extra): the
demo reports the best of them beside its own builds and says so when none is installed; the full peer
comparison, LiteRT included, is ``benchmarks/run.py``."""

from __future__ import annotations

import importlib.util
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

Runner = Callable[[np.ndarray], np.ndarray]


def _onnxruntime(path: Path, threads: int) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def _openvino(path: Path, threads: int) -> Runner:
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                          "PERFORMANCE_HINT": "LATENCY",
                                                          "INFERENCE_PRECISION_HINT": "f32"})
    return lambda x: compiled(x)[0]


ENGINES = {"ONNX Runtime": ("onnxruntime", _onnxruntime), "OpenVINO": ("openvino", _openvino)}


def installed_peers() -> list[str]:
    """The peer runtimes this environment has (the ONNX exporter is needed too)."""
    if importlib.util.find_spec("onnx") is None:
        return []
    return [name for name, (module, _) in ENGINES.items() if importlib.util.find_spec(module) is not None]


def peer_latencies(module: torch.jit.ScriptModule, x: np.ndarray, workdir: Path, threads: int = 2,
                   repeat: int = 20, rtol: float = 1e-3) -> dict[str, float]:
    """Median milliseconds per call of every installed peer that agrees with PyTorch on ``x`` (within
    ``rtol`` of the output's scale); peers that disagree are left out."""
    peers = installed_peers()
    if not peers:
        return {}
    path = workdir / "peer.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's notes on input formats are not actionable
        torch.onnx.export(module, (torch.from_numpy(x),), str(path), dynamo=False)
        reference = module(torch.from_numpy(x)).numpy()
    found = {}
    for name in peers:
        run = ENGINES[name][1](path, threads)
        if np.abs(run(x) - reference).max() <= rtol * np.abs(reference).max():
            found[name] = _median_ms(run, x, repeat)
    return found


def _median_ms(run: Runner, x: np.ndarray, repeat: int) -> float:
    run(x)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3
