"""Tuning a compiled model's kernels (``tvm-unify tune``, ``model.tune_model``) and applying the records.

Dense kernels: the tasks (``tasks``), the trial budget (``budget``), meta-schedule with resume from a
JSON database (``tune``), and keep-the-better, the per-kernel choice between the best tuned record and
the default schedule (``keep_better``). Unified kernels: the knob space (``space``), the XGBoost-guided
template search (``search``), the runners that measure candidates here, over RPC or by instruction
counts (``runners``). Records per target (``records``) and their use at compile time (``apply``).
``runners`` and ``model`` import the compiler, which imports this package: import them as submodules."""

from .budget import TRIALS_PER_ITER, allocate
from .keep_better import Race, default_kernel, keep_better, kernel_seconds
from .tasks import MIN_FLOP_SHARE, Task, call_counts, kernel_tasks, tunable
from .tune import open_database, tune_tasks_resumable, valid_records

__all__ = ["MIN_FLOP_SHARE", "Race", "TRIALS_PER_ITER", "Task", "allocate", "call_counts", "default_kernel",
           "keep_better", "kernel_seconds", "kernel_tasks", "open_database", "tunable", "tune_tasks_resumable",
           "valid_records"]
