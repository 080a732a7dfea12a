"""ONNX Runtime and LiteRT (XNNPACK) on the emulated aarch64 device, counted like tvm-unify's builds.

``benchmarks/arm.py`` counts the aarch64 instructions of one inference of our builds; this module counts
the runtimes users run on phones today on the same counter: their aarch64 wheels, installed in a folder
of the device root of their own (``tvm_unify.device.setup.ensure_guest_packages``), run the same model
(same weights, run dense) in the guest's python3 under qemu with the counting plugin
(``tvm_unify.device.emulator.run_guest_python``), one thread, and the guest counts one call of the
benchmark worker's runner (``peers.worker``: input copy, inference, output copy) between the plugin's
marker syscalls with the guest helper TVM's device server uses (``guest/counting.py``). Two counts:
inside the peer's own shared object (its kernels and interpreter: the counterpart of our "model code")
and the whole call (Python binding, libc, allocator: our "whole call").

    python -m peers.emulated ENGINE MODEL X.npy REFERENCE.npy      # inside the guest (count_peer runs it)
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Callable

import numpy as np

BENCH = Path(__file__).resolve().parent.parent
GUEST_FOLDER = "/opt/peer-py"  # in the device root, beside (never inside) the TVM site of the RPC server
# engine (a ``peers.worker`` loader) -> the label reports use
ENGINES = {"onnxruntime": "ONNX Runtime", "litert": "LiteRT (XNNPACK)"}
GUEST_TIMEOUT_S = 1800


def peer_wheels() -> list[str]:
    """The pins of the aarch64 peers: ONNX Runtime's from the ``bench`` extra of pyproject.toml (what
    ``benchmarks/run.py`` times on the host), ai-edge-litert's from the LiteRT venv's pins."""
    from peers import litert

    bench = tomllib.loads((BENCH.parent / "pyproject.toml").read_text())["project"]["optional-dependencies"]["bench"]
    return [next(p for p in bench if p.startswith("onnxruntime==")),
            next(p for p in litert.PINS if p.startswith("ai-edge-litert=="))]


def peer_models(pt: Path, model_name: str, x: np.ndarray, workdir: Path, log: Path) -> dict[str, Path | str]:
    """engine -> the file it loads, made from the eager module behind the TorchScript file ``pt`` (the
    built-in ``model_name``) traced on ``x``, or -> why there is none: an ONNX dynamo export, and a
    litert-torch conversion in the LiteRT venv (created on first use, its pip output in ``log``)."""
    import torch

    from peers import litert
    from peers.eager import eager_model, export_onnx, export_program

    model, example = eager_model(pt, model_name), torch.from_numpy(x)
    files: dict[str, Path | str] = {}
    try:
        export_onnx(model, example, workdir / "peer.onnx")
        files["onnxruntime"] = workdir / "peer.onnx"
    except Exception as err:  # an exporter failing is a result to report, not a crash
        files["onnxruntime"] = f"ONNX export failed: {type(err).__name__}: {str(err).strip()[-200:]}"
    try:
        python = litert.ensure_venv(torch.__version__.split("+")[0], log)
        export_program(model, example, workdir / "peer.pt2")
        np.save(workdir / "peer-inputs.npy", x[None])  # the converter traces the first of a stack of inputs
        env = {**os.environ, "PYTHONPATH": str(BENCH), "OMP_NUM_THREADS": "1"}
        litert.convert_in_venv(python, workdir / "peer.pt2", workdir / "peer-inputs.npy", workdir / "peer.tflite", env)
        files["litert"] = workdir / "peer.tflite"
    except Exception as err:
        files["litert"] = f"TFLite conversion failed: {type(err).__name__}: {str(err).strip()[-200:]}"
    return files


def count_peer(engine: str, model: Path, x: np.ndarray, reference: np.ndarray, qemu_cpu: str = "max",
               log: Callable[[str], None] = print) -> dict:
    """One inference of ``engine`` on ``model`` counted in the emulated guest: {"in_library", "total",
    "library", "version", "rel_err" (max abs error over PyTorch's largest output magnitude), "threads",
    "peer_threads_cpu_s"} (``_count_in_guest``)."""
    from peers import last_line
    from tvm_unify.device.emulator import run_guest_python
    from tvm_unify.device.setup import ensure_guest_packages

    site = ensure_guest_packages(GUEST_FOLDER, peer_wheels(), log)
    with tempfile.TemporaryDirectory() as tmp:  # a host path: the guest reads it through qemu as it is
        np.save(Path(tmp) / "x.npy", x)
        np.save(Path(tmp) / "reference.npy", reference)
        proc = run_guest_python(["-m", "peers.emulated", engine, str(model), f"{tmp}/x.npy", f"{tmp}/reference.npy"],
                                [site, str(BENCH)], qemu_cpu, GUEST_TIMEOUT_S, log)
    if proc.returncode:
        raise RuntimeError(f"{ENGINES[engine]} on the emulated device: {last_line(proc)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _library(engine: str) -> str:
    """The file name of the peer's loaded shared object that holds its kernels: ONNX Runtime's pybind
    module links the whole runtime (MLAS included) statically; LiteRT's wrappers are thin bindings over
    ``libpywrap_litert_common.so``, which holds the interpreter, its kernels and XNNPACK."""
    if engine == "onnxruntime":
        return os.path.basename(sys.modules["onnxruntime.capi.onnxruntime_pybind11_state"].__file__)
    return "libpywrap_litert_common.so"


def _threads() -> set[str]:
    """The process's thread ids (qemu user mode maps every guest thread to a host thread and passes
    their /proc entries through; qemu's own threads are among them)."""
    return set(os.listdir("/proc/self/task"))


def _cpu_s(threads: set[str]) -> float:
    """CPU seconds the threads ``threads`` have used so far (those that have exited count 0)."""
    ticks = 0
    for tid in threads:
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def _count_in_guest(engine: str, model: str, inputs: str, reference: str) -> dict:
    """The guest side: load with one thread, two warm-up calls (the first allocates and packs weights),
    one counted call. The plugin counts only the calling thread, so the report says how many threads the
    peer started and how much CPU time they used during the counted call ("peer_threads_cpu_s": 0 when
    the inference ran on the caller, as asked, and the count is all of it)."""
    from importlib import metadata

    from counting import count_call  # tvm_unify/device/guest/counting.py, on the guest's path
    from peers.worker import LOADERS

    loader, dists = LOADERS[engine]
    before = _threads()
    run = loader(Path(model), 1, "")
    x, expected = np.load(inputs), np.load(reference)
    out = run(x)
    run(x)
    started = _threads() - before
    busy = _cpu_s(started)
    counts = count_call(lambda: run(x), _library(engine))
    scale = float(np.abs(expected).max()) or 1.0
    return {"in_library": counts["in_library"], "total": counts["total"], "library": _library(engine),
            "version": metadata.version(dists[0]),
            "rel_err": float(np.abs(out.reshape(expected.shape) - expected).max()) / scale,
            "threads": len(started), "peer_threads_cpu_s": _cpu_s(started) - busy}


if __name__ == "__main__":
    print(json.dumps(_count_in_guest(*sys.argv[1:5])))
