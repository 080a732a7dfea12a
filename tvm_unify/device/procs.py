"""Background servers (RPC servers, trackers, emulated devices) started and stopped by process group.

TVM's RPC server forks helpers (a ``popen_worker``, one child per session) that outlive their parent
if only its PID is killed, so every server we start leads its own session (``setsid``) and is
stopped by signalling the whole group.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from ..errors import UserError


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (for tests and automatic device ports)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def spawn_group(cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``cmd`` as the leader of a new process group, output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)


def start_server(cmd: list[str], host: str, port: int, what: str, log_path: Path, timeout: float = 60.0,
                 env: dict[str, str] | None = None, ready_line: str | None = None) -> subprocess.Popen:
    """Spawn a server in its own process group and return once it is ready.

    Ready means: ``ready_line`` appeared in its log, or (without one) host:port accepts connections.
    Servers registered with a tracker need the log line: a TVM RPC server takes a probe connection
    for a failed session and re-registers with the tracker under a new key, racing early clients.
    """
    proc = spawn_group(cmd, log_path, env)
    probe_host = "127.0.0.1" if host == "0.0.0.0" else host
    if ready_line is None:
        wait_ready(proc, lambda: port_open(probe_host, port), timeout, f"{what} on {host}:{port}", log_path)
    else:
        wait_ready(proc, lambda: ready_line in log_path.read_text(errors="replace"), timeout,
                   f"{what} on {host}:{port}", log_path)
    return proc


def wait_ready(proc: subprocess.Popen, is_ready: Callable[[], bool], timeout: float, what: str,
               log_path: Path) -> None:
    """Poll ``is_ready`` until true; if ``proc`` exits or time runs out, stop its group and fail
    with the last line of its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if is_ready():
            return
        time.sleep(0.2)
    stop_group(proc.pid)
    proc.wait()
    raise UserError(f"{what} did not start within {timeout:g} s: {last_log_line(log_path)}")


def last_log_line(log_path: Path) -> str:
    """The last non-empty line of a log file, for one-line error messages."""
    try:
        lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return lines[-1].strip() if lines else "(empty log)"


def group_alive(pgid: int) -> bool:
    """True while a live (non-zombie) process of group ``pgid`` exists.

    Zombies do not count: a server's orphaned helper may wait for a reaper that containers lack.
    """
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def stop_group(pgid: int, grace: float = 3.0) -> None:
    """SIGTERM the process group ``pgid``, then SIGKILL whatever is left after ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            _reap(pgid)
            if not group_alive(pgid):
                return
            time.sleep(0.05)


def _reap(pid: int) -> None:
    """Collect the exit status if ``pid`` is our child, so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def python_module_cmd(module: str, *args: str) -> list[str]:
    """``python -m module args`` with this interpreter (host RPC servers and trackers)."""
    return [sys.executable, "-m", module, *args]
