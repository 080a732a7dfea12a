"""The emulated aarch64 device: a real TVM RPC server for aarch64 running under qemu user mode.

``start_device`` sets the device up on first use (``device/setup.py``, cached), then starts our guest
server script (``device/guest/server.py``) with the guest's python3 under ``qemu-aarch64``, in its own
process group, listening on 127.0.0.1 unless asked otherwise. Its PID and settings are kept in
``<cache>/run/<port>.json`` so ``stop_device``/``device_status`` work from any later command.

The guest runs TVM's runtime only (``TVM_USE_RUNTIME_LIB=1``, set in the guest's environment and never
on the host, where it would break compilation) on one thread (``TVM_NUM_THREADS=1``), so instruction
counts are exact; qemu's wall time says nothing about real ARM speed anyway.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from .setup import GUEST_PYTHON, GUEST_SITE, DeviceFiles, cache_dir, ensure_device_files
from ..errors import UserError
from .procs import group_alive, port_open, start_server, stop_group

GUEST_SERVER = Path(__file__).resolve().parent / "guest" / "server.py"
GUEST_SERVER_PATH = "/opt/tvu/server.py"
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
                        _guest_env(files, port, qemu_cpu), ready_line=READY_LINE)
    state = DeviceState(proc.pid, host, port, tracker, key, qemu_cpu, files.plugin is not None, str(log_path),
                        time.time())
    _state_path(port).write_text(json.dumps(asdict(state)))
    return state


def _server_command(files: DeviceFiles, port: int, host: str, tracker: str | None, key: str | None) -> list[str]:
    """qemu-aarch64 [-plugin counter] <root>/usr/bin/python3 /opt/tvu/server.py HOST PORT [TRACKER KEY]."""
    guest_copy = files.root / GUEST_SERVER_PATH.lstrip("/")
    guest_copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(GUEST_SERVER, guest_copy)
    cmd = ["qemu-aarch64"]
    if files.plugin is not None:
        cmd += ["-plugin", f"{files.plugin},out={_count_dir(port)}"]
    cmd += [str(files.root / GUEST_PYTHON.lstrip("/")), GUEST_SERVER_PATH, host, str(port)]
    if tracker:
        cmd += [tracker, key or ""]
    return cmd


def _count_dir(port: int) -> Path:
    """Where the plugin writes counts: a host path that does not exist in the guest root, so qemu
    does not redirect the guest's reads of it into the root."""
    path = _run_dir() / f"count-{port}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _guest_env(files: DeviceFiles, port: int, qemu_cpu: str) -> dict[str, str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "QEMU_LD_PREFIX": str(files.root),
        "QEMU_CPU": qemu_cpu,
        "PYTHONPATH": GUEST_SITE,
        "PYTHONUNBUFFERED": "1",
        "TVM_USE_RUNTIME_LIB": "1",
        "TVM_NUM_THREADS": "1",
    }
    if files.plugin is not None:
        env["TVU_COUNT_DIR"] = str(_count_dir(port))
    return env


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
