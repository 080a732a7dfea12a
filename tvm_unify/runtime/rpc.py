"""Run, check and time exported libraries on remote devices over TVM RPC, directly or via a tracker.

A device is reached either at ``host:port`` (an RPC server) or through TVM's tracker by key, with a
priority and a bounded wait. Every failure a user can meet (device unreachable, no free device, a
library for the wrong architecture, a device dying mid-run) becomes a one-line ``UserError`` naming
the device; with a tracker, a device lost mid-run is replaced by another one of the same key.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import numpy as np
import tvm
from tvm import rpc
from tvm.rpc import base as rpc_base
from tvm.runtime.vm import VirtualMachine

from ..errors import UserError, last_line
from .local import library_arch, library_device

CONNECT_TIMEOUT = 10.0
COUNT_FUNCTION = "tvm_unify.count_instructions"
INFO_FUNCTION = "tvm_unify.device_info"
_ANNOTATION = re.compile(r'annotation=R\.Tensor\(\(([\d, ]*)\), dtype="(\w+)"\)')
T = TypeVar("T")


@dataclass(frozen=True)
class DeviceSpec:
    """How to reach one device: an RPC server address, or a tracker address plus a device key."""

    host: str
    port: int
    key: str | None = None
    priority: int = 1
    timeout: float = 60.0

    @property
    def via_tracker(self) -> bool:
        return self.key is not None

    @property
    def label(self) -> str:
        return f"{self.key} via tracker {self.host}:{self.port}" if self.via_tracker else f"{self.host}:{self.port}"


class DeviceLost(UserError):
    """The device stopped answering in the middle of a job (killed, crashed, network gone)."""


def parse_address(text: str, what: str = "address") -> tuple[str, int]:
    """``host:port`` -> (host, port), or a one-line error."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"bad {what} {text!r}: expected host:port, e.g. 127.0.0.1:9090")
    return host, int(port)


@dataclass
class Session:
    """An open RPC session and the name of the device behind it (the server's address)."""

    remote: rpc.RPCSession
    device: str


def open_session(spec: DeviceSpec) -> Session:
    """Connect to the device ``spec`` names; bounded by CONNECT_TIMEOUT (tracker: by ``spec.timeout``)."""
    if spec.via_tracker:
        # No probe here: a server registered with a tracker treats a probe as a failed session and
        # re-registers under a new match key, invalidating the one just handed to us.
        host, port, matchkey = _tracker_request(spec)
        name = f"{spec.key}@{host}:{port}"
    else:
        host, port, matchkey, name = spec.host, spec.port, "", spec.label
        _check_reachable(host, port, f"device {name}")
    try:
        return Session(rpc.connect(host, port, key=matchkey), name)
    except Exception as err:  # TVM raises its own error classes for failed handshakes
        raise UserError(f"cannot open an RPC session with device {name}: {last_line(err)}") from None


def _check_reachable(host: str, port: int, what: str) -> None:
    """Fail fast and in bounded time when nothing answers at host:port."""
    _connect(host, port, what).close()


def _connect(host: str, port: int, what: str) -> socket.socket:
    """A TCP connection within CONNECT_TIMEOUT, or a one-line error saying why not."""
    try:
        return socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    except OSError as err:
        reason = "timed out" if isinstance(err, socket.timeout) else (err.strerror or str(err))
        raise UserError(f"{what} unreachable at {host}:{port} ({reason}, timeout {CONNECT_TIMEOUT:g} s)") from None


def _tracker_socket(host: str, port: int, timeout: float) -> socket.socket:
    """A tracker connection past the magic handshake, reads bounded by ``timeout`` seconds."""
    sock = _connect(host, port, "tracker")
    try:
        sock.sendall(struct.pack("<i", rpc_base.RPC_TRACKER_MAGIC))
        magic = struct.unpack("<i", rpc_base.recvall(sock, 4))[0]
    except OSError:
        magic = None
    if magic != rpc_base.RPC_TRACKER_MAGIC:
        sock.close()
        raise UserError(f"{host}:{port} is not a TVM RPC tracker")
    sock.settimeout(timeout)
    return sock


def _tracker_request(spec: DeviceSpec) -> tuple[str, int, str]:
    """Ask the tracker for a free device of ``spec.key``; wait at most ``spec.timeout`` seconds."""
    sock = _tracker_socket(spec.host, spec.port, spec.timeout)
    try:
        rpc_base.sendjson(sock, [rpc_base.TrackerCode.REQUEST, spec.key, "", spec.priority])
        value = rpc_base.recvjson(sock)
    except socket.timeout:
        raise UserError(f"no free device with key {spec.key!r} on tracker {spec.host}:{spec.port} "
                        f"within {spec.timeout:g} s (see `tvm-unify devices --tracker "
                        f"{spec.host}:{spec.port}`)") from None
    except OSError as err:
        raise UserError(f"tracker {spec.host}:{spec.port} dropped the request: {err}") from None
    finally:
        sock.close()
    if value[0] != rpc_base.TrackerCode.SUCCESS:
        raise UserError(f"tracker {spec.host}:{spec.port} refused the request for {spec.key!r}: {value}")
    host, port, matchkey = value[1]
    return host, int(port), matchkey


def tracker_summary(host: str, port: int) -> dict:
    """The tracker's view: ``{"queue_info": {key: {free, pending}}, "server_info": [...]}``."""
    sock = _tracker_socket(host, port, CONNECT_TIMEOUT)
    try:
        rpc_base.sendjson(sock, [rpc_base.TrackerCode.SUMMARY])
        value = rpc_base.recvjson(sock)
    finally:
        sock.close()
    if value[0] != rpc_base.TrackerCode.SUCCESS:
        raise UserError(f"tracker {host}:{port} answered {value} to a summary request")
    return value[1]


def format_tracker_summary(summary: dict) -> str:
    """A table of keys (devices registered, free, requests waiting) and the registered servers."""
    servers = sorted(summary.get("server_info", []), key=lambda s: s.get("key", ""))
    counts: dict[str, int] = {}
    for server in servers:
        key = server.get("key", "").split(":", 1)[-1]
        counts[key] = counts.get(key, 0) + 1
    queue = summary.get("queue_info", {})
    lines = [f"{'key':16s} {'devices':>7s} {'free':>5s} {'waiting':>7s}"]
    for key in sorted(set(queue) | set(counts)):
        info = queue.get(key, {"free": 0, "pending": 0})
        lines.append(f"{key:16s} {counts.get(key, 0):7d} {info['free']:5d} {info['pending']:7d}")
    lines.append("")
    lines.append("servers: " + (", ".join(f"{s['key'].split(':', 1)[-1]}@{s['addr'][0]}:{s['addr'][1]}"
                                           for s in servers) or "none"))
    return "\n".join(lines)


@dataclass
class RemoteModel:
    """A library loaded into a Relax VM on a remote device."""

    session: Session
    library: Path
    module: tvm.runtime.Module
    vm: VirtualMachine

    @property
    def device(self) -> tvm.runtime.Device:
        """Where the VM runs: the device's first OpenCL GPU for a GPU build (Mali, Adreno), else its CPU."""
        return remote_device(self.session, library_device(self.library))


def remote_device(session: Session, kind: str) -> tvm.runtime.Device:
    return session.remote.cl(0) if kind == "opencl" else session.remote.cpu()


def load_remote(session: Session, library: str | Path) -> RemoteModel:
    """Upload ``library`` and load it into a Relax VM on the device; wrong architecture -> clear error."""
    path = Path(library)
    arch = library_arch(path)
    with device_errors(session.device, "uploading"):
        session.remote.upload(str(path))
    try:
        module = session.remote.load_module(path.name)
    except Exception as err:  # the remote dlopen error arrives as a TVM RPC error
        if _is_connection_loss(str(err)):
            raise DeviceLost(f"device {session.device} was lost while loading {path.name}") from None
        raise UserError(f"device {session.device} cannot load {path.name}, built for {arch} (is the device "
                        f"{arch}?): {_load_reason(err)}") from None
    with device_errors(session.device, "starting the Relax VM"):
        vm = VirtualMachine(module, remote_device(session, library_device(path)))
    return RemoteModel(session, path, module, vm)


def _load_reason(err: BaseException) -> str:
    """The dynamic loader's complaint without TVM's check-failure preamble."""
    return last_line(err).split(" is false: ", 1)[-1]


@contextlib.contextmanager
def device_errors(device: str, doing: str) -> Iterator[None]:
    """Turn a remote failure into DeviceLost (connection gone) or a UserError naming the device."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:  # TVM reports remote failures with its own error classes
        if _is_connection_loss(str(exc)):
            raise DeviceLost(f"device {device} was lost while {doing} "
                             "(connection closed: the server died or was stopped)") from None
        raise UserError(f"device {device} failed while {doing}: {last_line(exc)}") from None


def _is_connection_loss(text: str) -> bool:
    """Whether a remote failure means the session is gone. A session killed mid-call may also surface as
    the reply check seeing RPC code 1 (``kShutdown``) where it expected ``kReturn``."""
    markers = ("connection", "Connection", "socket", "Socket", "RPCSessionTimeoutError", "Broken pipe",
               "EOF", "RPCServer", "Remote server", "closed", "kShutdown")
    return any(m in text for m in markers) or re.search(r"RPCCode::kReturn\) is false: code=1\b", text) is not None


def device_info(session: Session) -> dict:
    """What the device says about itself: the emulated device reports ``{"emulated": true, ...}``."""
    try:
        info = session.remote.get_function(INFO_FUNCTION)
    except Exception:  # not our emulated device: a plain TVM RPC server
        return {"emulated": False}
    with device_errors(session.device, "reading device information"):
        return json.loads(info())


def probe_input(vm: VirtualMachine, dev: tvm.runtime.Device, name: str) -> tuple[tuple[int, ...], str]:
    """Shape and dtype ``main`` expects, read from the VM's signature check on a 0-d probe tensor."""
    probe = tvm.runtime.tensor(np.zeros((), dtype="float32"), dev)
    try:
        vm["main"](probe)
    except Exception as err:  # the signature check answers with the expected annotation
        found = _ANNOTATION.search(str(err))
        if found:
            shape = tuple(int(d) for d in found.group(1).replace(" ", "").split(",") if d)
            return shape, found.group(2)
        if _is_connection_loss(str(err)):
            raise DeviceLost(f"the device running {name} was lost while probing its input") from None
    raise UserError(f"cannot tell the input shape of {name}: pass --input x.npy")


def remote_inputs(model: RemoteModel, arrays: list[np.ndarray]) -> list[tvm.runtime.Tensor]:
    """Copy the input arrays to the device."""
    with device_errors(model.session.device, "copying inputs"):
        return [tvm.runtime.tensor(np.ascontiguousarray(a), model.device) for a in arrays]


def run_remote(model: RemoteModel, arrays: list[np.ndarray]) -> np.ndarray:
    """Run ``main`` once on the device and bring its (first) output back."""
    args = remote_inputs(model, arrays)
    with device_errors(model.session.device, f"running {model.library.name}"):
        out = model.vm["main"](*args)
        return (out if hasattr(out, "numpy") else out[0]).numpy()


@dataclass
class Timing:
    """Per-call latency statistics (milliseconds) from ``repeat`` timed rounds of ``number`` calls."""

    median_ms: float
    p90_ms: float
    std_ms: float
    mean_ms: float
    min_ms: float
    repeat: int
    number: int

    @classmethod
    def from_seconds(cls, costs: list[float], number: int) -> "Timing":
        ms = np.asarray(costs, dtype=float) * 1e3
        return cls(float(np.median(ms)), float(np.percentile(ms, 90)), float(ms.std()), float(ms.mean()),
                   float(ms.min()), len(ms), number)


def time_remote(model: RemoteModel, arrays: list[np.ndarray], warmup: int = 1, repeat: int = 10,
                number: int = 1) -> Timing:
    """Time ``main`` with the device's own ``time_evaluator`` (so the network is not in the figure)."""
    args = remote_inputs(model, arrays)
    with device_errors(model.session.device, f"timing {model.library.name}"):
        return time_vm(model.vm, model.device, args, warmup, repeat, number)


def time_vm(vm: VirtualMachine, dev: tvm.runtime.Device, args: list, warmup: int, repeat: int,
            number: int) -> Timing:
    """``warmup`` untimed calls, then ``repeat`` rounds of ``number`` calls timed where the VM runs."""
    for _ in range(warmup):
        vm["main"](*args)
    timer = vm.time_evaluator("main", dev, number=number, repeat=repeat)
    return Timing.from_seconds(list(timer(*args).results), number)


def count_remote(model: RemoteModel, arrays: list[np.ndarray]) -> dict[str, int]:
    """Dynamic aarch64 instruction counts of one ``main`` call on the emulated device (its qemu plugin):
    ``kernels`` (inside the compiled library: exact across runs) and ``total`` (with the runtime)."""
    try:
        counter = model.session.remote.get_function(COUNT_FUNCTION)
    except Exception:  # a missing remote global arrives as a TVM error
        raise UserError(f"device {model.session.device} cannot count instructions: only the emulated "
                        "device (`tvm-unify device start`) can") from None
    args = remote_inputs(model, arrays)
    with device_errors(model.session.device, f"counting instructions of {model.library.name}"):
        return json.loads(counter(model.module, model.library.name, *args))


def with_device(spec: DeviceSpec, job: Callable[[Session], T], retries: int = 1,
                log: Callable[[str], None] = print) -> T:
    """Run ``job`` in a session with the device; via a tracker, retry on another device if one is lost."""
    failures = 0
    while True:
        try:
            return job(open_session(spec))
        except DeviceLost as err:
            failures += 1
            if not spec.via_tracker or failures > retries:
                raise
            log(f"{err}; retrying on another {spec.key!r} device ({failures}/{retries})")
