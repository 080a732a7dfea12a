"""Real RPC servers and trackers on 127.0.0.1 for the device tests, each stopped by process group.

Every helper returns a ``Server`` whose ``stop()`` kills the whole group and checks nothing is left;
fixtures call it in their finalizers, so a failing test leaves no stray process either.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tvm_unify.cli import main
from tvm_unify.device.procs import free_port, group_alive, port_open, python_module_cmd, spawn_group, stop_group, wait_ready

HOST = "127.0.0.1"


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def stop(self) -> None:
        stop_group(self.proc.pid)
        self.proc.wait(timeout=10)
        assert not group_alive(self.proc.pid), f"processes of group {self.proc.pid} survived"


# Servers and trackers only run code, they never compile: the runtime-only library starts faster
# (set for these child processes only; on the host side it would break compilation).
RUNTIME_ENV = dict(os.environ, TVM_USE_RUNTIME_LIB="1")


def _start_all(commands: list[tuple[list[str], int, Path, str | None]], what: str) -> list[Server]:
    """Spawn every command at once (each in its own group), then wait for all of them to be ready."""
    servers = [Server(spawn_group(cmd, log, RUNTIME_ENV), port, log) for cmd, port, log, _ in commands]
    try:
        for srv, (_, _, _, ready_line) in zip(servers, commands):
            ready = (lambda s=srv: port_open(HOST, s.port)) if ready_line is None else \
                (lambda s=srv, line=ready_line: line in s.log.read_text(errors="replace"))
            wait_ready(srv.proc, ready, 90, what, srv.log)
    except BaseException:
        for srv in servers:
            srv.stop()
        raise
    return servers


def start_tracker(log_dir: Path) -> Server:
    port = free_port()
    cmd = python_module_cmd("tvm.exec.rpc_tracker", "--host", HOST, "--port", str(port), "--port-end",
                            str(port + 1))
    return _start_all([(cmd, port, log_dir / f"tracker-{port}.log", None)], "tracker")[0]


def start_host_servers(log_dir: Path, count: int = 1, tracker: Server | None = None, key: str = "") -> list[Server]:
    """Host-architecture TVM RPC servers (they stand in for boards in the fast fault tests).

    Servers registered with a tracker are never probed (see ``procs.start_server``): they are ready
    once they log their bind address, and tests wait for them to show up free on the tracker.
    """
    commands = []
    for _ in range(count):
        port = free_port()
        args = ["--host", HOST, "--port", str(port), "--port-end", str(port + 1)]
        ready_line = None
        if tracker is not None:
            args += ["--tracker", tracker.address, "--key", key]
            ready_line = f"bind to {HOST}:{port}"
        commands.append((python_module_cmd("tvm.exec.rpc_server", *args), port, log_dir / f"server-{port}.log",
                         ready_line))
    return _start_all(commands, "rpc server")


def cli_error(capsys, argv: list[str]) -> str:
    """Run the CLI expecting a user error; return its single stderr line."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("tvm-unify: error:"), err
    return err


def save_npy(path: Path, array: np.ndarray) -> str:
    np.save(path, array)
    return str(path)
