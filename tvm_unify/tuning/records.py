"""Tuning records of one target, in one folder (``schedules/<target>/``):

- ``unified.json``: per unified-kernel workload (``UnifiedLayer.key``: op, shapes, block pattern), the
  default's cost, every measured candidate (knobs, cost or the error that rejected it) and the decision
  (the accepted knobs, or none: the default stays). One workload per line, sorted, so a re-tune diffs
  as the workloads it changed; workloads are shared by every model that has them.
- ``dense/``: meta-schedule's JSON database for the dense kernels (``database_workload.json``,
  ``database_tuning_record.json``; meta-schedule deduplicates workloads by structural hash), and
  ``dense/decisions.json``: per kernel the keep-the-better race run at tune time, so ``compile`` only
  installs the winners and times nothing.

A record file that does not parse is a one-line ``UserError`` before anything is written.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import tvm
import tvm_ffi
from tvm.s_tir import meta_schedule as ms

from ..errors import UserError, last_line
from ..fileio import atomic_output

FORMAT = "tvm-unify-unified-records/1"
UNIFIED_FILE = "unified.json"
DENSE_DIR = "dense"
DECISIONS_FILE = "decisions.json"


def shipped_root() -> Path:
    """The records shipped in the package (``schedules/`` in the repository)."""
    return Path(str(resources.files("tvm_unify") / "records"))


def _read_json(path: Path, what: str) -> dict:
    """``path`` parsed as a JSON object, or a one-line error naming the file."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"corrupt tuning records {path} ({what}): {err}") from None
    if not isinstance(value, dict):
        raise UserError(f"corrupt tuning records {path} ({what}): not a JSON object")
    return value


class Records:
    """The records of one target folder: unified workloads, dense decisions and the dense database."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.unified: dict[str, dict] = {}
        self.decisions: dict[str, dict] = {}
        unified, decisions = self.dir / UNIFIED_FILE, self.dir / DENSE_DIR / DECISIONS_FILE
        if unified.exists():
            data = _read_json(unified, "unified-kernel records")
            if data.get("format") != FORMAT or not isinstance(data.get("workloads"), dict):
                raise UserError(f"corrupt tuning records {unified}: expected format {FORMAT!r} with 'workloads'")
            self.unified = data["workloads"]
        if decisions.exists():
            self.decisions = _read_json(decisions, "dense keep-the-better decisions")

    @property
    def empty(self) -> bool:
        return not self.unified and not self.decisions

    def has_dense(self) -> bool:
        return (self.dir / DENSE_DIR / "database_workload.json").exists()

    def dense_database(self) -> ms.database.JSONDatabase:
        """Meta-schedule's database of the dense kernels (created when missing); a file it cannot parse
        is a one-line error."""
        (self.dir / DENSE_DIR).mkdir(parents=True, exist_ok=True)
        try:
            return ms.database.JSONDatabase(work_dir=str(self.dir / DENSE_DIR))
        except RuntimeError as err:  # TVM raises its errors as RuntimeError subclasses
            raise UserError(f"corrupt tuning records {self.dir / DENSE_DIR} (meta-schedule database): "
                            f"{last_line(err)}") from None

    def tuned_database(self, keys: set[str]) -> ms.database.MemoryDatabase:
        """The dense database reduced to the workloads ``keys`` (``workload_hash``) and their records, for
        ``compile``: parsing every workload of the shipped file (a serialized module each) costs seconds
        and grows with every tuned model, while a model needs a few. A line that does not parse is a
        one-line error."""
        database = ms.database.MemoryDatabase()
        dense = self.dir / DENSE_DIR
        workloads: dict[int, ms.database.Workload] = {}
        try:
            with open(dense / "database_workload.json") as lines:
                for index, line in enumerate(lines):
                    entry = json.loads(line)
                    if f"{int(entry[0]):016x}" in keys:
                        workload = ms.database.Workload.from_json(entry)
                        workloads[index] = database.commit_workload(workload.mod)
            with open(dense / "database_tuning_record.json") as lines:
                for line in lines:
                    index, record = json.loads(line)
                    if index in workloads:
                        database.commit_tuning_record(ms.database.TuningRecord.from_json(record, workloads[index]))
        except (OSError, ValueError, IndexError, TypeError, RuntimeError) as err:
            raise UserError(f"corrupt tuning records {dense} (meta-schedule database): {last_line(err)}") from None
        return database

    def save_unified(self) -> None:
        """Write ``unified.json`` atomically, one workload per line."""
        self.dir.mkdir(parents=True, exist_ok=True)
        lines = [f" {json.dumps(key)}: {json.dumps(self.unified[key], sort_keys=True)}" for key in sorted(self.unified)]
        text = f'{{"format": {json.dumps(FORMAT)}, "workloads": {{\n' + ",\n".join(lines) + "\n}}\n"
        with atomic_output(self.dir / UNIFIED_FILE) as tmp:
            tmp.write_text(text)

    def save_decisions(self) -> None:
        """Write ``dense/decisions.json`` atomically, one kernel per line."""
        (self.dir / DENSE_DIR).mkdir(parents=True, exist_ok=True)
        lines = [f" {json.dumps(k)}: {json.dumps(self.decisions[k], sort_keys=True)}" for k in sorted(self.decisions)]
        with atomic_output(self.dir / DENSE_DIR / DECISIONS_FILE) as tmp:
            tmp.write_text("{\n" + ",\n".join(lines) + "\n}\n")


def workload_hash(task_mod: tvm.IRModule) -> str:
    """A dense kernel's key in ``decisions.json``: the structural hash meta-schedule keys workloads by."""
    return f"{tvm_ffi.structural_hash(task_mod) & 0xFFFFFFFFFFFFFFFF:016x}"


SHIPPED = "shipped"  # ``compile``'s default records: the package's, for the target if it has some


def records_for(schedules: str | Path | None, target_name: str) -> Records | None:
    """The records ``compile`` uses for ``target_name``: ``SHIPPED`` (the package's, if it has a folder
    for the target), a folder holding one folder per target (``--schedules DIR``), or None (none)."""
    if schedules is None:
        return None
    if schedules == SHIPPED:
        directory = shipped_root() / target_name
        return Records(directory) if directory.is_dir() else None
    directory = Path(schedules) / target_name
    if not directory.is_dir():
        raise UserError(f"no tuning records for target {target_name} in {schedules} (expected a folder {directory})")
    return Records(directory)
