"""Tuning with meta-schedule's evolutionary search and XGBoost cost model, resumable: every measured
batch is committed to a JSON database (and the wall time to a state file beside it), so a killed run
keeps what it measured and a re-run tunes only what a task still lacks."""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

from .budget import TRIALS_PER_ITER
from .fast_import import import_tensor_intrinsics
from .tasks import Task

if TYPE_CHECKING:
    from .runners import RemoteRunner

STATE_FILE = "tuning.json"  # budget, per-task trials and wall time of the tuning runs, next to the database
SEED = 1  # fixed, for repeatable searches; in the range meta-schedule's own fork_seed draws from (>= 1)


def open_database(work_dir: Path) -> ms.database.JSONDatabase:
    """The JSON database in ``work_dir`` (created if missing)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(work_dir=str(work_dir))


def valid_records(database: ms.database.Database, task: Task) -> int:
    """Successfully measured candidates of ``task`` in the database (0 when the workload is new)."""
    if not database.has_workload(task.mod):
        return 0
    return len(database.get_top_k(database.commit_workload(task.mod), 1 << 30))


def _task_logger(task: Task, log_dir: Path) -> logging.Logger:
    """The task's search log, written to ``log_dir``. Not meta-schedule's ``get_loggers_from_work_dir``:
    it reconfigures process-wide logging (``dictConfig``), and its second call in one process failed under
    pytest's log capture (a handler without a name on meta-schedule's logger)."""
    logger = logging.getLogger(f"tvm_unify.tuning.{task.name}")
    for handler in list(logger.handlers):  # an earlier run's file
        logger.removeHandler(handler)
        handler.close()
    handler = logging.FileHandler(log_dir / f"{task.name[:100]}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger


def _tune_context(task: Task, target: tvm.target.Target, log_dir: Path, threads: int) -> ms.TuneContext:
    """A meta-schedule task named after the kernel (so the logs say which kernel they are about)."""
    logger = _task_logger(task, log_dir)
    return ms.TuneContext(mod=task.mod, target=target, space_generator="post-order-apply",
                          search_strategy="evolutionary", task_name=task.name, logger=logger, rand_state=SEED,
                          num_threads=threads).clone()


@derived_object
class SaveWallTime(ms.measure_callback.PyMeasureCallback):
    """After every measured batch, add the time since the previous one to the tuning state file: a run
    killed at any point still reports the time it spent up to its last measured batch."""

    def __init__(self, state: dict, path: Path) -> None:
        self.state, self.path, self.last = state, path, time.perf_counter()

    def apply(self, *_batch) -> None:
        now = time.perf_counter()
        self.state["wall_seconds"] += now - self.last
        self.last = now
        self.path.write_text(json.dumps(self.state, indent=1))


class TimeUp(Exception):
    """The time budget ran out (raised by ``StopAt`` to end a meta-schedule session)."""


@derived_object
class StopAt(ms.measure_callback.PyMeasureCallback):
    """Ends the tuning session at the first measured batch that completes after ``deadline``
    (``time.perf_counter``). Meta-schedule's budgets are trial counts only, so a time budget stops it by
    raising from this callback, which runs after the batch was committed to the database. Its task
    scheduler's first round sends one batch of every task before it collects any, so the shortest session
    still measures a batch per task."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.fired = False  # TVM's FFI hands the exception back as a bare RuntimeError: this tells them apart

    def apply(self, *_batch) -> None:
        if time.perf_counter() >= self.deadline:
            self.fired = True
            raise TimeUp


def _measurers(device: "RemoteRunner | None", threads: int) -> tuple[ms.builder.Builder, ms.runner.Runner]:
    """This machine's builder and runner pools, or candidates built here and measured on ``device``."""
    if device is not None:
        from .ms_device import DeviceBuilder, DeviceRunner  # imports the compiler, which imports this package

        return DeviceBuilder(device), DeviceRunner(device)
    return (ms.builder.LocalBuilder(max_workers=threads, timeout_sec=120, initializer=import_tensor_intrinsics),
            ms.runner.LocalRunner(evaluator_config=ms.runner.EvaluatorConfig(number=5, repeat=1, min_repeat_ms=20),
                                  initializer=import_tensor_intrinsics))


def _tune_tasks(tasks: list[Task], trials: list[int], database: ms.database.Database, target: tvm.target.Target,
                cost_model: ms.cost_model.CostModel, clock: SaveWallTime, log_dir: Path, threads: int,
                device: "RemoteRunner | None", deadline: float) -> None:
    """Run ``trials`` measured trials in all on ``tasks`` in one meta-schedule session (one builder and
    runner pool: starting them costs minutes on a loaded 2-core machine), up to each task's share, or
    until the first batch measured after ``deadline``; the database keeps every measured batch."""
    import_tensor_intrinsics()  # before TuneContext imports it the slow way
    builder, runner = _measurers(device, threads)
    stop = StopAt(deadline)
    try:
        ms.tune_tasks(
            tasks=[_tune_context(task, target, log_dir, threads) for task in tasks],
            task_weights=[float(n) for n in trials], work_dir=str(log_dir), max_trials_global=sum(trials),
            max_trials_per_task=max(trials), num_trials_per_iter=TRIALS_PER_ITER,
            builder=builder, runner=runner, database=database, cost_model=cost_model,
            measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), clock, stop])
    except Exception:  # noqa: BLE001 - the callback's exception comes back through TVM's FFI as another type
        if not stop.fired:
            raise


def tune_tasks_resumable(tasks: list[Task], budget: list[int], work_dir: Path, target: tvm.target.Target,
                         threads: int, state: dict | None = None, log: Callable[[str], None] = print,
                         device: "RemoteRunner | None" = None, deadline: float = math.inf
                         ) -> ms.database.JSONDatabase:
    """Give each task its ``budget`` of valid records in the database at ``work_dir``, tuning only what
    is missing, measured on this machine or on ``device``, and stopping after the first batch measured
    past ``deadline`` (``time.perf_counter``); ``state`` (e.g. the model and budget) is merged into the
    state file, which accumulates the wall time after every measured batch."""
    database = open_database(work_dir)
    state_path = work_dir / STATE_FILE
    saved = json.loads(state_path.read_text()) if state_path.exists() else {"wall_seconds": 0.0}
    saved.update(state or {}, trials_per_iter=TRIALS_PER_ITER,
                 tasks={t.name: {"weight": t.weight, "flops": t.flops, "trials": n} for t, n in zip(tasks, budget)})
    state_path.write_text(json.dumps(saved, indent=1))
    clock = SaveWallTime(saved, state_path)
    cost_model = ms.cost_model.XGBModel(num_warmup_samples=16, verbose_eval=0)
    log_dir = Path(tempfile.mkdtemp(prefix="tvm-unify-tuning-logs-"))
    missing = [n - valid_records(database, task) for task, n in zip(tasks, budget)]
    for task, n, m in zip(tasks, budget, missing):
        log(f"  {task.name} x{task.weight}: {n} trials, {max(0, m)} to run")
    pending = [(task, m) for task, m in zip(tasks, missing) if m > 0]
    if pending:
        _tune_tasks([t for t, _ in pending], [m for _, m in pending], database, target, cost_model, clock, log_dir,
                    threads, device, deadline)
    return database
