"""The latency of the runtimes users would pick instead, on the same model, when they are installed:
ONNX Runtime and OpenVINO on an ONNX export of the TorchScript file. Optional (the ``bench`` extra): the
demo reports the best of them beside its own builds and says so when none is installed; the full peer
comparison, LiteRT included, is ``benchmarks/run.py``."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
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
    ``rtol`` of the output's scale); peers that disagree, or fail, are left out.

    Each peer runs in a process of its own, as ``benchmarks/run.py`` runs every engine: its native
    libraries must not share the caller's process (OpenVINO's TBB, once loaded, hides Intel's CPU OpenCL
    platform from TVM for the rest of the process), nor its thread pool the caller's cores."""
    peers = installed_peers()
    if not peers:
        return {}
    path = workdir / "peer.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's notes on input formats are not actionable
        torch.onnx.export(module, (torch.from_numpy(x),), str(path), dynamo=False)
        reference = module(torch.from_numpy(x)).numpy()
    np.save(workdir / "peer-input.npy", x)
    np.save(workdir / "peer-reference.npy", reference)
    found = {}
    for name in peers:
        args = [name, path, workdir / "peer-input.npy", workdir / "peer-reference.npy", threads, repeat, rtol]
        proc = subprocess.run([sys.executable, "-m", __name__, *map(str, args)], capture_output=True, text=True)
        ms = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 and proc.stdout.strip() else None
        if ms is not None:
            found[name] = ms
    return found


def _time_peer(name: str, path: str, inputs: str, reference: str, threads: str, repeat: str, rtol: str) -> None:
    """The child process of ``peer_latencies``: print one peer's median ms as JSON, or null when its
    output disagrees with the reference."""
    run = ENGINES[name][1](Path(path), int(threads))
    x, expected = np.load(inputs), np.load(reference)
    agrees = np.abs(run(x) - expected).max() <= float(rtol) * np.abs(expected).max()
    print(json.dumps(_median_ms(run, x, int(repeat)) if agrees else None))


def _median_ms(run: Runner, x: np.ndarray, repeat: int) -> float:
    run(x)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


if __name__ == "__main__":
    _time_peer(*sys.argv[1:])
