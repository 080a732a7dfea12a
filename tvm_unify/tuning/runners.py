"""Where a unified-kernel candidate is measured: on this machine (``LocalRunner``, seconds), on a device
over TVM RPC, direct or through a tracker (``RemoteRunner``, seconds by the device's own timer), or on
the emulated aarch64 device by exact dynamic instruction counts (``RemoteRunner(count=True)``: a proxy
for ARM speed, never emulated wall time, which does not track ARM time; ``docs/design.md``).

A candidate is measured as a one-kernel Relax model (``kernel_model``: the kernel with its weight
arrays as constants), the unit every runner can load, time and count, and whose output is checked
against the default kernel's. TVM's RPC client has no call timeout, so a remote measurement runs in a
worker thread with a deadline: a device that stops answering (crashed, SIGSTOPped) costs at most
``timeout`` seconds, that candidate fails with one line, the session is dropped, and the next
candidate opens a new one.
"""

from __future__ import annotations

import itertools
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, TypeVar

import numpy as np
import tvm
from tvm import relax

from ..compiler import export_library
from ..errors import UserError
from ..runtime.rpc import DeviceSpec, Session, count_remote, load_remote, open_session, run_remote, time_remote
from ..targets import TargetPreset

T = TypeVar("T")
LOCAL_REPEAT = 5
LOCAL_MIN_REPEAT_MS = 10
REMOTE_REPEAT = 5


@dataclass
class Measurement:
    """A candidate's cost (seconds, or instructions) and its output on the runner's input."""

    cost: float
    output: np.ndarray


class Runner(Protocol):
    unit: str  # "s" or "instructions"
    label: str
    parallel: bool  # whether the cost shows what parallel tasks gain (not for instruction counts)

    def measure(self, executable: tvm.runtime.Executable, x: np.ndarray) -> Measurement: ...


def kernel_model(func: tvm.tirx.PrimFunc, arrays: tuple[np.ndarray, ...]) -> tvm.IRModule:
    """``main(x) = func(x, *arrays)``: one kernel with its constant arguments, as a Relax model."""
    x_buf, y_buf = func.params[0], func.params[-1]
    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([int(d) for d in x_buf.shape], str(x_buf.dtype)))
    with builder.function("main", [x]):
        kernel = builder.add_func(func.without_attr("global_symbol"), "kernel")
        y = builder.emit(relax.call_tir(kernel, [x, *(relax.const(a) for a in arrays)],
                                        relax.TensorType([int(d) for d in y_buf.shape], str(y_buf.dtype))))
        builder.emit_func_output(y)
    return builder.get()


class LocalRunner:
    """This machine: the kernel's own ``time_evaluator``, minimum over ``LOCAL_REPEAT`` repeats of at
    least ``LOCAL_MIN_REPEAT_MS`` ms (the minimum, because other processes share the cores)."""

    unit, label, parallel = "s", "local", True

    def measure(self, executable: tvm.runtime.Executable, x: np.ndarray) -> Measurement:
        vm = relax.VirtualMachine(executable, tvm.cpu())
        arg = tvm.runtime.tensor(x)
        output = vm["main"](arg).numpy()
        timer = vm.time_evaluator("main", tvm.cpu(), repeat=LOCAL_REPEAT, min_repeat_ms=LOCAL_MIN_REPEAT_MS)
        return Measurement(min(timer(arg).results), output)


class MeasureTimeout(UserError):
    """A remote measurement that did not finish within its deadline."""


def with_deadline(job: Callable[[], T], seconds: float, what: str) -> T:
    """``job()`` in a daemon thread, or MeasureTimeout after ``seconds`` (the thread is abandoned: a
    blocked RPC call cannot be interrupted, and its socket goes with the dropped session)."""
    result: list = []
    thread = threading.Thread(target=lambda: result.append(_capture(job)), daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise MeasureTimeout(f"{what}: no answer within {seconds:g} s (device hung or stopped?)")
    ok, value = result[0]
    if not ok:
        raise value
    return value


def _capture(job: Callable[[], T]) -> tuple[bool, object]:
    try:
        return True, job()
    except Exception as err:  # noqa: BLE001 - re-raised in the caller's thread
        return False, err


class RemoteRunner:
    """A device over RPC (``spec``: direct or through a tracker), measuring seconds with the device's
    timer or, with ``count``, the emulated device's instruction counts of the kernel's code. Libraries
    are cross-linked for ``preset``; every measurement is bounded by ``timeout`` seconds."""

    def __init__(self, spec: DeviceSpec, preset: TargetPreset, timeout: float, count: bool = False) -> None:
        self.spec, self.preset, self.timeout, self.count = spec, preset, timeout, count
        self.unit = "instructions" if count else "s"
        self.parallel = not count
        self.label = f"{'count' if count else 'rpc'} {spec.label}"
        self.session: Session | None = None
        self.dir = Path(tempfile.mkdtemp(prefix="tvm-unify-tune-"))
        self.names = itertools.count()

    def measure(self, executable: tvm.runtime.Executable, x: np.ndarray) -> Measurement:
        return self.measure_library(self.export(executable), x)

    def export(self, executable: tvm.runtime.Executable, directory: Path | None = None) -> Path:
        """The candidate as a library for the device, under a fresh name (the device caches by name), in
        ``directory`` (default: the runner's own)."""
        library = (directory or self.dir) / f"candidate{next(self.names)}.so"
        export_library(executable, self.preset, library)
        return library

    def measure_library(self, library: Path, x: np.ndarray, fresh_session: bool = False) -> Measurement:
        """Cost and output of an exported candidate on input ``x``, within the deadline; with
        ``fresh_session``, in a new session (a new process on the device), as meta-schedule's own RPC
        runner does: loading meta-schedule's dense candidates one after another into one server process
        crashed it in the dynamic loader after six or seven of them (reproduced on a host RPC server)."""
        if fresh_session:
            self.session = None
        try:
            return with_deadline(lambda: self._measure(library, x), self.timeout, f"device {self.spec.label}")
        except UserError:
            self.session = None  # lost or hung: the next candidate opens a new session
            raise

    def _measure(self, library: Path, x: np.ndarray) -> Measurement:
        if self.session is None:
            self.session = open_session(self.spec)
        model = load_remote(self.session, library)
        output = run_remote(model, [x])
        if self.count:
            return Measurement(float(count_remote(model, [x])["kernels"]), output)
        return Measurement(time_remote(model, [x], repeat=REMOTE_REPEAT).min_ms / 1e3, output)
