"""One-command peer benchmark: tvm-unify against PyTorch, ONNX Runtime, OpenVINO and LiteRT, in one run.

For each built-in model, dense and one-shot unified at each sparsity and block shape, every engine runs
the same weights (peers run the unified weights as dense tensors) on the same input, in its own process,
one process at a time, with a fixed thread count: latency (median, p90, after warm-up), peak RSS of the
process, size of the file it loads, and its outputs against PyTorch eager's. An engine whose outputs
disagree beyond tolerance is reported FAILED and not timed.

Engines: PyTorch eager, torch.compile, ONNX Runtime and OpenVINO (on a torch.onnx dynamo export), LiteRT
with XNNPACK (litert-torch conversion in a cached venv of its own), dense TVM (`tvm-unify compile
--dense`), tvm-unify fp32 and int8. Models are made with the tvm-unify CLI only (`export-builtin`:
BatchNorm-calibrated weights; `unify --one-shot`; `compile`).

Writes OUT/RESULTS.md, OUT/results/results.json (every measurement, machine, versions) and PNG plots
beside the JSON. Intermediate files (.pt, .onnx, .tflite, .so) are cached in --work: delete it to
rebuild them after tvm-unify changes.

    python benchmarks/run.py --quick --out /tmp/bench             # CI: digits-cnn, dense + 0.75 4x4
    python benchmarks/run.py --models resnet18 mobilenetv2 --sparsities 0.75 --blocks 4x4 --threads 2
    python benchmarks/run.py                                      # everything (hours on 2 cores)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from peers import last_line, litert  # noqa: E402
from peers.eager import eager_model, export_onnx, export_program, metadata as model_metadata  # noqa: E402
from peers.report import write_report  # noqa: E402

MODELS = ("digits-cnn", "mlp", "resnet18", "mobilenetv2", "resnet18-224", "mobilenetv2-224")
FP32_TOLERANCE = 1e-3  # max abs error relative to PyTorch's largest output magnitude
INT8_TOLERANCE = 0.1  # int8 activations: looser; the report also gives top-1 agreement
CHECK_INPUTS = 8  # random inputs every engine is checked on; the first one is timed
SEED = 0
WORKER_TIMEOUT_S = 3600
# why no "TVM tuned" engine: the report's Skipped line
TUNED_NOTE = ("compile applies the shipped records (`schedules/host`) to every TVM build here; tuning this "
              "machine's dense kernels first (`tvm-unify tune --dense`, meta-schedule) is not part of this run")
MAIN_VENV_DISTS = ("torch", "onnxruntime", "onnx", "onnxscript", "openvino", "apache-tvm", "apache-tvm-ffi",
                   "tvm-unify", "numpy")


@dataclass(frozen=True)
class Engine:
    """A runtime as the report names it, the worker loader that runs it and the artifact it loads."""

    key: str
    label: str
    worker: str
    artifact: str
    tolerance: float = FP32_TOLERANCE
    unified_only: bool = False  # the tvm-unify builds: nothing to lower in a dense model


ENGINES = (
    Engine("torch", "PyTorch eager", "torch", "pt"),
    Engine("torch-compile", "torch.compile", "torch-compile", "pt"),
    Engine("onnxruntime", "ONNX Runtime", "onnxruntime", "onnx"),
    Engine("openvino", "OpenVINO", "openvino", "onnx"),
    Engine("litert", "LiteRT (XNNPACK)", "litert", "tflite"),
    Engine("tvm-dense", "TVM dense", "tvm", "so-dense"),
    Engine("unify-fp32", "tvm-unify fp32", "tvm", "so-fp32", unified_only=True),
    Engine("unify-int8", "tvm-unify int8", "tvm", "so-int8", INT8_TOLERANCE, unified_only=True),
)


@dataclass
class Variant:
    """One model at one sparsity and block shape (sparsity 0: the dense export) with its artifacts:
    artifact kind -> file, or -> the reason it could not be made."""

    model: str
    sparsity: float
    block: str | None
    workdir: Path
    files: dict[str, Path] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return "dense" if self.sparsity == 0 else f"{self.sparsity:g} {self.block}"

    @property
    def dir(self) -> Path:
        return self.workdir / self.model / self.label.replace(" ", "-")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.75, 0.9],
                        help="fractions of blocks pruned (the dense model is always measured too)")
    parser.add_argument("--blocks", nargs="+", default=["4x4", "1x4"], help="block shapes, rows x cols")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="thread counts per engine")
    parser.add_argument("--engines", nargs="+", choices=[e.key for e in ENGINES], default=[e.key for e in ENGINES])
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls before timing")
    parser.add_argument("--repeat", type=int, default=100, help="timed single calls per engine")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every engine this many times, in turn, and keep each one's fastest round "
                             "(fairer ratios on a machine whose speed drifts)")
    parser.add_argument("--quick", action="store_true",
                        help="CI smoke run: digits-cnn, dense + 0.75 4x4, 2 threads, 20 calls; exits 1 "
                             "unless every engine produced a number")
    parser.add_argument("--out", type=Path, default=BENCH, help="where RESULTS.md and results/ go")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "tvm-unify" / "bench-work",
                        help="cache of the models, exports and builds")
    parser.add_argument("--note", default="", help="a line for the report (e.g. how busy the machine was)")
    parser.add_argument("--append", action="store_true",
                        help="keep the measurements of OUT/results/results.json that this run does not "
                             "redo (same CPU only), so a long benchmark can be run in parts")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.sparsities, args.blocks, args.threads = ["digits-cnn"], [0.75], ["4x4"], [2]
        args.warmup, args.repeat = 5, 20
    return args


def tvm_unify(*args: str | Path) -> None:
    """Run a tvm-unify CLI command; its one-line error becomes the exception message."""
    cli = Path(sys.executable).with_name("tvm-unify")
    proc = subprocess.run([str(cli if cli.exists() else shutil.which("tvm-unify")), *map(str, args)],
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"tvm-unify {args[0]}: {last_line(proc)}")


def cached(path: Path, make) -> Path:
    """``path``, made by ``make(tmp)`` first when missing (written to a temporary name, then renamed,
    so an interrupted run never leaves a half-written file in the cache)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"tmp-{path.name}")
        make(tmp)
        tmp.replace(path)
    return path


def prepare_inputs(variant: Variant) -> tuple[Path, Path]:
    """Check inputs (fixed seed, model-wide) and PyTorch eager's outputs on them."""
    pt = variant.files["pt"]
    shape = model_metadata(pt)["input_shape"]
    inputs = cached(variant.dir.parent / "inputs.npy", lambda p: np.save(
        p, np.random.default_rng(SEED).standard_normal((CHECK_INPUTS, *shape), np.float32)))
    reference = cached(variant.dir / "reference.npy",
                       lambda p: np.save(p, eager_outputs(pt, variant.model, np.load(inputs))))
    return inputs, reference


def eager_outputs(pt: Path, model: str, inputs: np.ndarray) -> np.ndarray:
    """PyTorch eager's outputs, after checking that the eager module reproduces the TorchScript file it
    was loaded from (so every engine runs what tvm-unify wrote)."""
    scripted, eager = torch.jit.load(str(pt)), eager_model(pt, model)
    with torch.inference_mode():
        expected = np.stack([scripted(torch.from_numpy(x)).numpy() for x in inputs])
        outputs = np.stack([eager(torch.from_numpy(x)).numpy() for x in inputs])
    if np.abs(outputs - expected).max() > 1e-5 * np.abs(expected).max():
        raise RuntimeError(f"{model}: the built-in definition does not reproduce {pt.name}")
    return outputs


def make_artifacts(variant: Variant, dense_pt: Path, engines: list[Engine], litert_python: Path | str) -> None:
    """Everything the selected engines of ``variant`` load, each step recorded as a file or a reason."""
    d = variant.dir
    try:
        variant.files["pt"] = dense_pt if variant.sparsity == 0 else cached(d / "model.pt", lambda p: tvm_unify(
            "unify", dense_pt, "--one-shot", "--block", variant.block, "--sparsity", variant.sparsity, "-o", p))
        variant.files["inputs"], variant.files["reference"] = prepare_inputs(variant)
    except RuntimeError as err:  # no model, no reference: every engine of the variant reports why
        variant.missing.update(dict.fromkeys([e.artifact for e in engines], f"no model: {err}"))
        return
    x = torch.from_numpy(np.load(variant.files["inputs"])[0])
    steps = {
        "onnx": lambda p: export_onnx(eager_model(variant.files["pt"], variant.model), x, p),
        "pt2": lambda p: export_program(eager_model(variant.files["pt"], variant.model), x, p),
        "tflite": lambda p: convert_tflite(variant, litert_python, p),
        "so-dense": lambda p: tvm_unify("compile", variant.files["pt"], "--target", "host", "--dense", "-o", p),
        "so-fp32": lambda p: tvm_unify("compile", variant.files["pt"], "--target", "host", "-o", p),
        "so-int8": lambda p: tvm_unify("compile", variant.files["pt"], "--target", "host", "--mode", "int8", "-o", p),
    }
    suffix = {"onnx": ".onnx", "pt2": ".pt2", "tflite": ".tflite"}
    needed = {e.artifact for e in engines if not (e.unified_only and variant.sparsity == 0)} - {"pt"}
    if "tflite" in needed:
        needed.add("pt2")
    for kind in sorted(needed, key=list(steps).index):
        try:
            variant.files[kind] = cached(d / f"{kind}{suffix.get(kind, '.so')}", steps[kind])
        except Exception as err:  # a peer's exporter failing is a result to report, not a crash
            variant.missing[kind] = f"{type(err).__name__}: {str(err).strip()[-300:]}"


def convert_tflite(variant: Variant, python: Path | str, path: Path) -> None:
    """litert-torch conversion in the LiteRT venv (``python``, or the reason there is none)."""
    if not isinstance(python, Path):
        raise RuntimeError(python)
    if "pt2" not in variant.files:
        raise RuntimeError(f"no ExportedProgram: {variant.missing.get('pt2')}")
    litert.convert_in_venv(python, variant.files["pt2"], variant.files["inputs"], path, worker_env(1))


def worker_env(threads: int) -> dict[str, str]:
    """The workers' environment: ``peers`` importable, every OpenMP-style pool sized to ``threads``."""
    path = os.pathsep.join(filter(None, [str(BENCH), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(threads), "TVM_NUM_THREADS": str(threads)}


def artifact_size(path: Path) -> int:
    """Bytes on disk, ONNX external data (``<name>.data``) included."""
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + ".data")) if p.exists())


def merge_rounds(records: list[dict]) -> dict:
    """One job's record over ``--rounds``: its fastest round (the first failure if any round failed),
    with every round's median kept in ``round_ms``.

    Rounds run every engine once, in turn, so each engine meets the machine's slow and quiet minutes
    alike. On this project's VMs every engine slowed down in some minutes (by up to 2.6x: sustained
    load on a shared host; the VM's steal counter stayed near 0), and interference only ever adds
    time, so the fastest round is the one closest to the engine's own speed."""
    failed = [r for r in records if r["status"] != "ok"]
    if failed:
        return failed[0]
    return {**min(records, key=lambda r: r["median_ms"]), "round_ms": [r["median_ms"] for r in records]}


def cpu_ticks() -> tuple[int, int]:
    """(stolen, total) CPU ticks of this machine so far (``/proc/stat``; (0, 0) where there is none).

    A VM's virtual CPUs lose time to other guests on the host ("steal"). TVM's thread pool waits for its
    workers in spinning barriers, so a stolen vCPU stalls a whole parallel region, and its latency moved
    2x between minutes of one session while the peers' barely did. Every measurement records the share
    of CPU time stolen while it ran, so a reader can tell a slow engine from a contended run."""
    path = Path("/proc/stat")
    if not path.exists():
        return 0, 0
    fields = [int(v) for v in path.read_text().splitlines()[0].split()[1:]]
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def run_worker(engine: Engine, variant: Variant, threads: int, args: argparse.Namespace,
               litert_python: Path | str) -> dict:
    """One engine on one variant in a fresh process: its report, or ``status`` FAILED and the reason."""
    record = {"model": variant.model, "variant": variant.label, "sparsity": variant.sparsity,
              "block": variant.block, "engine": engine.label, "threads": threads}
    artifact = variant.files.get(engine.artifact)
    if artifact is None:
        return {**record, "status": "FAILED", "reason": variant.missing.get(engine.artifact, "not built")}
    record["size_bytes"] = artifact_size(artifact)
    python = litert_python if engine.worker == "litert" else Path(sys.executable)
    out = variant.dir / f"{engine.key}-t{threads}.json"
    out.unlink(missing_ok=True)
    cmd = [str(python), "-m", "peers.worker", engine.worker, str(artifact), "--model-name", variant.model,
           "--inputs", str(variant.files["inputs"]), "--reference", str(variant.files["reference"]),
           "--tolerance", str(engine.tolerance), "--threads", str(threads), "--warmup", str(args.warmup),
           "--repeat", str(args.repeat), "--json", str(out)]
    stolen, total = cpu_ticks()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=worker_env(threads), timeout=WORKER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {**record, "status": "FAILED", "reason": f"worker ran past {WORKER_TIMEOUT_S} s"}
    stolen_after, total_after = cpu_ticks()
    record["steal_pct"] = 100.0 * (stolen_after - stolen) / max(total_after - total, 1)
    if proc.returncode or not out.exists():
        return {**record, "status": "FAILED", "reason": last_line(proc)}
    report = json.loads(out.read_text())
    if not report["agrees"]:
        return {**record, **report, "status": "FAILED",
                "reason": f"outputs disagree with PyTorch: max rel err {report['max_rel_err']:.2g} "
                          f"> {engine.tolerance:g}"}
    return {**record, **report, "status": "ok"}


def litert_venv(log: Path) -> Path | str:
    """The LiteRT venv's python, or why there is none (printed; the LiteRT rows then say it)."""
    try:
        start = time.perf_counter()
        python = litert.ensure_venv(torch.__version__.split("+")[0], log)
        print(f"LiteRT venv: {python.parent.parent} ({time.perf_counter() - start:.0f} s)", flush=True)
        return python
    except (subprocess.CalledProcessError, OSError) as err:
        reason = f"LiteRT venv could not be created ({err}); see {log}"
        print(reason, flush=True)
        return reason


def missing_peer_packages(engines: list[Engine]) -> dict[str, str]:
    """Engines whose Python packages the main venv lacks, with the reason (``pip install -e .[bench]``)."""
    needs = {"onnxruntime": ("onnxruntime", "onnx", "onnxscript"), "openvino": ("openvino", "onnx", "onnxscript")}
    missing = {}
    for engine in engines:
        absent = [m for m in needs.get(engine.worker, ()) if importlib.util.find_spec(m) is None]
        if absent:
            missing[engine.key] = f"not installed: {', '.join(absent)} (pip install -e .[bench])"
    return missing


def machine() -> dict:
    """What the numbers were measured on: CPU model name and vector extensions, cores, OS, commit."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields = dict(line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return {"cpu": fields.get("model name", platform.processor() or "unknown"),
            "vector_extensions": sorted(flags & {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16",
                                                 "amx_tile", "avx_vnni"}),
            "cores": os.cpu_count(), "os": platform.platform(), "python": platform.python_version(),
            "commit": commit.stdout.strip(), "date": time.strftime("%Y-%m-%d %H:%M %Z")}


def versions(litert_python: Path | str) -> dict[str, str]:
    """Exact versions of every package that produced a number (LiteRT's from its own venv)."""
    found = {}
    for dist in MAIN_VENV_DISTS:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    if isinstance(litert_python, Path):
        code = ("import json; from importlib.metadata import version as v; "
                "print(json.dumps({d: v(d) for d in ('litert-torch', 'ai-edge-litert', 'torch')}))")
        theirs = json.loads(subprocess.check_output([str(litert_python), "-c", code], text=True))
        found.update({f"{k} (LiteRT venv)" if k == "torch" else k: val for k, val in theirs.items()})
    return found


def variants(args: argparse.Namespace) -> list[Variant]:
    return [Variant(m, s, b, args.work) for m in args.models
            for s, b in [(0.0, None)] + [(s, b) for s in args.sparsities for b in args.blocks]]


def previous_records(path: Path, cpu: str, redo: set[tuple]) -> list[dict]:
    """``--append``: the measurements of an earlier run on the same CPU that this run does not redo."""
    if not path.exists():
        return []
    old = json.loads(path.read_text())
    if old["machine"]["cpu"] != cpu:
        print(f"--append: {path} was measured on {old['machine']['cpu']}, not {cpu}: not kept", flush=True)
        return []
    return [r for r in old["results"] if (r["model"], r["variant"], r["engine"], r["threads"]) not in redo]



def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    engines = [e for e in ENGINES if e.key in args.engines]
    results_dir = args.out / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    litert_python = litert_venv(results_dir / "litert-venv.log") if "litert" in args.engines else "not selected"
    skipped = missing_peer_packages(engines)
    for key, reason in skipped.items():
        print(f"skipping {key}: {reason}", flush=True)
    engines = [e for e in engines if e.key not in skipped or args.quick]
    info = {"machine": machine(), "versions": versions(litert_python), "command": " ".join(["python benchmarks/run.py", *sys.argv[1:]]), "note": args.note,
            "policy": {"warmup": args.warmup, "repeat": args.repeat, "rounds": args.rounds, "check_inputs": CHECK_INPUTS,
                       "fp32_tolerance": FP32_TOLERANCE, "int8_tolerance": INT8_TOLERANCE},
            "skipped": {**skipped, "TVM tuned": TUNED_NOTE}}
    print(f"machine: {info['machine']['cpu']} ({', '.join(info['machine']['vector_extensions'])}), "
          f"{info['machine']['cores']} cores", flush=True)
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()), flush=True)

    todo = variants(args)
    dense_pts = {m: cached(args.work / m / "dense.pt", lambda p, m=m: tvm_unify("export-builtin", m, "-o", p))
                 for m in args.models}
    for variant in tqdm(todo, desc="preparing", unit="variant"):
        make_artifacts(variant, dense_pts[variant.model], engines, litert_python)

    jobs = [(v, t, e) for v in todo for t in args.threads for e in engines if not (e.unified_only and v.sparsity == 0)]
    redo = {(v.model, v.label, e.label, t) for v, t, e in jobs}
    results_path = results_dir / "results.json"
    records = previous_records(results_path, info["machine"]["cpu"], redo) if args.append else []
    rounds: dict[int, list[dict]] = {i: [] for i in range(len(jobs))}
    with tqdm(total=len(jobs) * args.rounds, desc="measuring", unit="run") as bar:
        for _ in range(args.rounds):
            for i, (variant, threads, engine) in enumerate(jobs):
                bar.set_postfix_str(f"{variant.model} {variant.label} {engine.label} t{threads}")
                record = run_worker(engine, variant, threads, args, litert_python)
                rounds[i].append(record)
                bar.update()
                if record["status"] != "ok":
                    tqdm.write(f"FAILED {variant.model} {variant.label} {engine.label} t{threads}: {record['reason']}")
            results_path.write_text(json.dumps({**info, "results": records + [merge_rounds(r) for r in rounds.values()]},
                                               indent=1))
    records += [merge_rounds(r) for r in rounds.values()]
    write_report({**info, "results": records}, args.out)
    print(f"wrote {args.out / 'RESULTS.md'} and {results_dir}", flush=True)
    failed = [r for r in records if r["status"] != "ok"]
    return 1 if args.quick and failed else 0


if __name__ == "__main__":
    sys.exit(main())
