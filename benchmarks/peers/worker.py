"""One engine in one process: load an artifact, check it against PyTorch, time it, report JSON.

``benchmarks/run.py`` starts one worker per (engine, thread count), one at a time, so the peak RSS the
worker reports (``VmHWM`` of this process) is the engine's own and no two thread pools share the
cores. Every engine goes through the same ``check`` and ``time_calls``: a loader only turns an artifact
into a ``Runner`` (numpy in, numpy out, output copy included), so the engines differ in nothing but the
engine. Imports are local to each loader: the worker also runs in the LiteRT venv, which has neither
TVM nor tvm-unify.

    python -m peers.worker ENGINE ARTIFACT --inputs X.npy --reference Y.npy --threads 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np

Runner = Callable[[np.ndarray], np.ndarray]


def torch_runner(model, threads: int) -> Runner:
    """Call an eager (or compiled) torch module with ``threads`` intra-op threads, without autograd."""
    import torch

    torch.set_num_threads(threads)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return run


def load_torch(path: Path, threads: int, model_name: str) -> Runner:
    """PyTorch eager: the built-in module with the TorchScript file's weights."""
    from peers.eager import eager_model

    return torch_runner(eager_model(path, model_name), threads)


def load_torch_compile(path: Path, threads: int, model_name: str) -> Runner:
    """``torch.compile`` (inductor) of the same module; it compiles on the first (check) call."""
    import torch

    from peers.eager import eager_model

    return torch_runner(torch.compile(eager_model(path, model_name)), threads)


def load_onnxruntime(path: Path, threads: int, model_name: str) -> Runner:
    """ONNX Runtime's CPU provider, ``threads`` intra-op threads, sequential execution."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def load_openvino(path: Path, threads: int, model_name: str) -> Runner:
    """OpenVINO CPU plugin on the ONNX file, latency hint, ``threads`` inference threads, and fp32
    precision: on CPUs with bf16 (AVX512-BF16, AMX) the plugin otherwise computes in bf16 by default."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                            "PERFORMANCE_HINT": "LATENCY",
                                                            "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        request.infer({0: x})
        return request.get_output_tensor(0).data.copy()

    return run


def load_litert(path: Path, threads: int, model_name: str) -> Runner:
    """LiteRT's interpreter (XNNPACK delegate, applied by default) with ``threads`` threads."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]["index"]
    sink = interpreter.get_output_details()[0]["index"]

    def run(x: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(source, x)
        interpreter.invoke()
        return interpreter.get_tensor(sink).copy()

    return run


def load_tvm(path: Path, threads: int, model_name: str) -> Runner:
    """A host .so from ``tvm-unify compile`` on TVM's Relax VM (threads: ``TVM_NUM_THREADS``)."""
    os.environ["TVM_NUM_THREADS"] = str(threads)  # read when the runtime's thread pool starts
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(path)), tvm.cpu())
    main = vm["main"]

    def run(x: np.ndarray) -> np.ndarray:
        out = main(tvm.runtime.tensor(x))
        return (out if hasattr(out, "numpy") else out[0]).numpy()

    return run


# engine -> (loader, the distributions whose versions the report prints)
LOADERS: dict[str, tuple[Callable[[Path, int, str], Runner], tuple[str, ...]]] = {
    "torch": (load_torch, ("torch",)),
    "torch-compile": (load_torch_compile, ("torch",)),
    "onnxruntime": (load_onnxruntime, ("onnxruntime",)),
    "openvino": (load_openvino, ("openvino",)),
    "litert": (load_litert, ("ai-edge-litert",)),
    "tvm": (load_tvm, ("apache-tvm",)),
}


def time_calls(run: Runner, x: np.ndarray, warmup: int, repeat: int) -> np.ndarray:
    """Seconds of ``repeat`` single calls on ``x`` after ``warmup`` untimed ones: the one timing loop."""
    for _ in range(warmup):
        run(x)
    samples = np.empty(repeat)
    for i in range(repeat):
        start = time.perf_counter()
        run(x)
        samples[i] = time.perf_counter() - start
    return samples


def check(run: Runner, inputs: np.ndarray, reference: np.ndarray) -> dict:
    """Outputs on every check input vs PyTorch's: max abs error relative to PyTorch's largest output
    magnitude, and the fraction of inputs whose top-1 class agrees."""
    outputs = np.stack([run(x) for x in inputs]).reshape(reference.shape)
    scale = float(np.abs(reference).max()) or 1.0
    return {"max_rel_err": float(np.abs(outputs - reference).max()) / scale,
            "top1_agreement": float(np.mean(outputs.argmax(-1) == reference.argmax(-1)))}


def measure(args: argparse.Namespace) -> dict:
    """Load, check against the reference, and time only when the outputs agree within tolerance."""
    loader, dists = LOADERS[args.engine]
    start = time.perf_counter()
    run = loader(args.artifact, args.threads, args.model_name)
    inputs, reference = np.load(args.inputs), np.load(args.reference)
    report = {"load_s": time.perf_counter() - start, **check(run, inputs, reference),
              "versions": {d: metadata.version(d) for d in dists}}
    report["agrees"] = report["max_rel_err"] <= args.tolerance
    if report["agrees"]:
        samples = time_calls(run, inputs[0], args.warmup, args.repeat) * 1e3
        report.update(median_ms=float(np.median(samples)), p90_ms=float(np.percentile(samples, 90)),
                      min_ms=float(samples.min()), repeat=args.repeat, warmup=args.warmup)
    report["peak_rss_mib"] = peak_rss_mib()
    return report


def peak_rss_mib() -> float:
    """This process's peak resident set size. Linux's ``VmHWM`` first: ``ru_maxrss`` survives exec, so
    a worker forked from the benchmark's torch-laden process would report that process's size."""
    status = Path("/proc/self/status")
    for line in status.read_text().splitlines() if status.exists() else []:
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engine", choices=sorted(LOADERS))
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--model-name", required=True, help="built-in model name (torch engines)")
    parser.add_argument("--inputs", type=Path, required=True, help="check inputs, K x input shape; the first is timed")
    parser.add_argument("--reference", type=Path, required=True, help="PyTorch's outputs on the check inputs")
    parser.add_argument("--tolerance", type=float, required=True, help="allowed max_rel_err")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=100)
    parser.add_argument("--json", type=Path, required=True, help="write the report here")
    args = parser.parse_args(argv)
    args.json.write_text(json.dumps(measure(args), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
