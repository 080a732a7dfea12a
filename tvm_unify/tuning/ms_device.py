"""Meta-schedule's builder and runner for a device: dense-kernel candidates measured by the project's own
``RemoteRunner`` (RPC, direct or through a tracker, seconds by the device's timer; or instruction counts
on the emulated device), so dense kernels are tuned where the unified ones are.

Why not meta-schedule's ``RPCRunner``: it reaches devices only through a tracker and cannot count
instructions; ``RemoteRunner`` does both, with the sessions, deadlines, one-line errors and
cross-linking the rest of the product uses. Each candidate is built, like a unified candidate, as a
one-kernel Relax model (``runners.kernel_model``: its first input from the runner, the other inputs as
random constants) and exported for the device.

Meta-schedule's database keeps ``run_secs``; with instruction counts the figure stored there is
instructions at a nominal 1 ns each (``units.py``), so the cost model and the database see one
consistent scale, and the keep-the-better decisions say which runner measured them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

from .runners import RemoteRunner, kernel_model
from .tasks import random_inputs
from .units import as_seconds


def build_kernel(func: tvm.tirx.PrimFunc, target: tvm.target.Target) -> tuple[tvm.runtime.Executable, np.ndarray]:
    """``func`` as a one-kernel model for ``target`` and the input it is measured on."""
    x, *constants = random_inputs(func)
    return tvm.compile(kernel_model(func, tuple(constants)), target=target), x


def measure_on_device(runner: RemoteRunner, library: Path, x: np.ndarray) -> tuple[float, np.ndarray]:
    """An exported candidate's cost on meta-schedule's scale and its output, in a session of its own
    (``RemoteRunner.measure_library`` says why)."""
    measured = runner.measure_library(library, x, fresh_session=True)
    return as_seconds(measured.cost, runner.unit), measured.output


@derived_object
class DeviceBuilder(ms.builder.PyBuilder):
    """Builds each candidate into a library for the device (in this process: a one-kernel model builds in
    well under a second, and the device measures one candidate at a time anyway), each in a folder of its
    own, which meta-schedule deletes once the candidate is measured."""

    def __init__(self, runner: RemoteRunner) -> None:
        super().__init__()
        self.runner = runner

    def build(self, build_inputs: list[ms.builder.BuilderInput]) -> list[ms.builder.BuilderResult]:
        results = []
        for item in build_inputs:
            try:
                executable, x = build_kernel(item.mod["main"], item.target)
                library = self.runner.export(executable, Path(tempfile.mkdtemp(dir=self.runner.dir)))
                np.save(library.with_suffix(".npy"), x)
                results.append(ms.builder.BuilderResult(str(library), None))
            except Exception as err:  # noqa: BLE001 - a candidate that fails to build is recorded as failed
                results.append(ms.builder.BuilderResult(None, _last_line(err)))
        return results


@derived_object
class DeviceRunner(ms.runner.PyRunner):
    """Measures each built candidate on the device, each in a session of its own, within the runner's
    deadline; a failure (a hung or lost device, a crash) fails that candidate and tuning goes on."""

    def __init__(self, runner: RemoteRunner) -> None:
        super().__init__()
        self.runner = runner

    def run(self, runner_inputs: list[ms.runner.RunnerInput]) -> list[ms.runner.RunnerFuture]:
        return [Finished(self._run(Path(item.artifact_path))) for item in runner_inputs]

    def _run(self, library: Path) -> ms.runner.RunnerResult:
        try:
            seconds, _ = measure_on_device(self.runner, library, np.load(library.with_suffix(".npy")))
        except Exception as err:  # noqa: BLE001 - recorded as the candidate's error, tuning goes on
            return ms.runner.RunnerResult(None, _last_line(err))
        return ms.runner.RunnerResult([seconds], None)


@derived_object
class Finished(ms.runner.PyRunnerFuture):
    """A measurement that is already done (the device runs candidates one at a time)."""

    def __init__(self, result: ms.runner.RunnerResult) -> None:
        super().__init__()
        self._result = result

    def done(self) -> bool:
        return True

    def result(self) -> ms.runner.RunnerResult:
        return self._result


def _last_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[-1] if text else type(err).__name__)[:300]
