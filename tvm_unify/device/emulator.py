"""The emulated aarch64 device: a real TVM RPC server for aarch64 running under qemu user mode.

``start_device`` sets the device up on first use (``device/setup.py``, cached), then starts our guest
server script (``device/guest/server.py``) with the guest's python3 under ``qemu-aarch64``, in its own
process group, listening on 127.0.0.1 unless asked otherwise. Its PID and settings are kept in
``<cache>/run/<port>.json`` so ``stop_device``/``device_status`` work from any later command.

``run_guest_python`` runs the guest's python3 once, without a server, under the same counting plugin:
for programs that count their own calls (peer runtimes on the same counter, ``benchmarks/arm.py``).

The guest runs TVM's runtime only (``TVM_USE_RUNTIME_LIB=1``, set in the guest's environment and never
on the host, where it would break compilation) on one thread (``TVM_NUM_THREADS=1``), so instruction
counts are exact; qemu's wall time says nothing about real ARM speed anyway.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from .setup import GUEST_PYTHON, GUEST_SITE, DeviceFiles, cache_dir, ensure_device_files
from ..errors import UserError
from .procs import group_alive, port_open, start_server, stop_group

GUEST_SCRIPTS = Path(__file__).resolve().parent / "guest"  # server.py and the counting.py it imports
GUEST_DIR = "/opt/tvu"  # where they are copied in the root
GUEST_SERVER_PATH = f"{GUEST_DIR}/server.py"
START_TIMEOUT = 180.0
READY_LINE = "tvm-unify emulated aarch64 device listening on"  # printed by the guest server once it listens


@dataclass(frozen=True)
class DeviceState:
    """A started emulated device, as recorded in its state file."""

    pid: int
    host: str
    port: int
    tracker: str | None
    key: str | None
    qemu_cpu: str
    counting: bool
    log: str
    started: float

    @property
    def alive(self) -> bool:
        return group_alive(self.pid)


def _run_dir() -> Path:
    return cache_dir() / "run"


def _state_path(port: int) -> Path:
    return _run_dir() / f"{port}.json"


def _read_state(port: int) -> DeviceState | None:
    path = _state_path(port)
    try:
        return DeviceState(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def start_device(port: int = 9090, host: str = "127.0.0.1", tracker: str | None = None, key: str | None = None,
                 qemu_cpu: str = "max", log: Callable[[str], None] = print) -> DeviceState:
    """Start an emulated aarch64 RPC server on ``host:port`` (set-up on first use); reuse a running one."""
    if (tracker is None) != (key is None):
        raise UserError("--tracker and --key go together: the tracker needs the key the device registers under")
    current = _read_state(port)
    if current and current.alive:
        if (current.host, current.tracker, current.key) != (host, tracker, key):
            raise UserError(f"an emulated device already runs on port {port} with other settings "
                            f"(host {current.host}, tracker {current.tracker}, key {current.key}): "
                            f"`tvm-unify device stop --port {port}` first")
        log(f"[device] already running on {host}:{port} (pid {current.pid})")
        return current
    if port_open(host, port):
        raise UserError(f"port {port} on {host} is already in use by another program")
    files = ensure_device_files(log)
    log_path = _run_dir() / f"{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text("")
    proc = start_server(_server_command(files, port, host, tracker, key), host, port,
                        f"the emulated device (log {log_path})", log_path, START_TIMEOUT,
                        {**_guest_env(files, _count_dir(port), qemu_cpu, [GUEST_SITE]), "TVM_USE_RUNTIME_LIB": "1"},
                        ready_line=READY_LINE)
    state = DeviceState(proc.pid, host, port, tracker, key, qemu_cpu, files.plugin is not None, str(log_path),
                        time.time())
    _state_path(port).write_text(json.dumps(asdict(state)))
    return state


def _server_command(files: DeviceFiles, port: int, host: str, tracker: str | None, key: str | None) -> list[str]:
    """qemu-aarch64 [-plugin counter] <root>/usr/bin/python3 /opt/tvu/server.py HOST PORT [TRACKER KEY]."""
    _install_guest_scripts(files)
    cmd = [*_qemu_python(files, _count_dir(port)), GUEST_SERVER_PATH, host, str(port)]
    if tracker:
        cmd += [tracker, key or ""]
    return cmd


def _install_guest_scripts(files: DeviceFiles) -> None:
    """Copy the guest scripts (``guest/*.py``) to /opt/tvu in the root, fresh on every start."""
    target = files.root / GUEST_DIR.lstrip("/")
    target.mkdir(parents=True, exist_ok=True)
    for script in GUEST_SCRIPTS.glob("*.py"):
        shutil.copyfile(script, target / script.name)


def _qemu_python(files: DeviceFiles, count_dir: Path) -> list[str]:
    """qemu-aarch64 [-plugin counter,out=count_dir] <root>/usr/bin/python3: the guest interpreter."""
    cmd = ["qemu-aarch64"]
    if files.plugin is not None:
        cmd += ["-plugin", f"{files.plugin},out={count_dir}"]
    return [*cmd, str(files.root / GUEST_PYTHON.lstrip("/"))]


def _count_dir(port: int) -> Path:
    """Where the plugin writes counts: a host path that does not exist in the guest root, so qemu
    does not redirect the guest's reads of it into the root."""
    path = _run_dir() / f"count-{port}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _guest_env(files: DeviceFiles, count_dir: Path, qemu_cpu: str, python_path: list[str]) -> dict[str, str]:
    """The guest interpreter's environment: the root as qemu's library prefix, the emulated CPU, one
    thread for every pool that reads a variable (TVM's, OpenBLAS's under numpy), the count folder."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "QEMU_LD_PREFIX": str(files.root),
        "QEMU_CPU": qemu_cpu,
        "PYTHONPATH": os.pathsep.join(python_path),
        "PYTHONUNBUFFERED": "1",
        "TVM_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }
    if files.plugin is not None:
        env["TVU_COUNT_DIR"] = str(count_dir)
    return env


def run_guest_python(args: list[str], python_path: list[str], qemu_cpu: str = "max", timeout: float | None = None,
                     log: Callable[[str], None] = print) -> subprocess.CompletedProcess:
    """Run the guest's python3 once with ``args`` (no RPC server) under the counting plugin, the guest
    scripts' folder first on its path: for programs that count their own calls with
    ``guest/counting.py``, such as peer runtimes that are no TVM modules. Host paths that do not exist
    in the root (``python_path`` entries, model files) are readable from the guest as they are."""
    files = ensure_device_files(log)
    if files.plugin is None:
        raise UserError("instruction counting is unavailable on this machine (the qemu plugin could not be built)")
    _install_guest_scripts(files)
    _run_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="count-", dir=_run_dir()) as count_dir:
        return subprocess.run([*_qemu_python(files, Path(count_dir)), *args], capture_output=True, text=True,
                              env=_guest_env(files, Path(count_dir), qemu_cpu, [GUEST_DIR, *python_path]),
                              timeout=timeout)


def stop_device(port: int = 9090) -> DeviceState | None:
    """Stop the emulated device on ``port`` (its whole process group) and drop its files; None if
    none was recorded."""
    state = _read_state(port)
    if state is None:
        return None
    stop_group(state.pid)
    _state_path(port).unlink(missing_ok=True)
    shutil.rmtree(_count_dir(port), ignore_errors=True)
    Path(state.log).unlink(missing_ok=True)  # kept only for devices that died on their own
    return state


def device_status(port: int | None = None) -> list[DeviceState]:
    """Recorded devices (all, or the one on ``port``); dead ones are reported and their records dropped."""
    paths = [_state_path(port)] if port is not None else sorted(_run_dir().glob("*.json"))
    states = [s for s in (_read_state(int(p.stem)) for p in paths) if s is not None]
    for state in states:
        if not state.alive:
            _state_path(state.port).unlink(missing_ok=True)
    return states


def format_status(states: list[DeviceState]) -> str:
    """One line per device: address, state, pid, tracker registration, counting, log."""
    if not states:
        return "no emulated devices running"
    lines = []
    for s in states:
        where = f"tracker {s.tracker} key {s.key}" if s.tracker else "direct"
        status = "running" if s.alive else "dead (record removed)"
        lines.append(f"{s.host}:{s.port}  {status}  pid {s.pid}  aarch64 (qemu, cpu {s.qemu_cpu})  {where}  "
                     f"counting {'on' if s.counting else 'off'}  log {s.log}")
    return "\n".join(lines)
