"""The unification verbs: ``unify_`` (one-shot projection, no data), ``train_unify`` (ADMM + fine-tune),
``train_dense`` (the plain starting point) and ``unify_builtin`` (train, unify and export a built-in).

``train_unify`` runs up to four phases on a built-in data set: dense training (for a fresh model),
ADMM rounds (W-step epochs, Z/U updates, ``rho`` growing), the hard projection, and masked fine-tuning
with the structure frozen. With ``admm_rounds=0`` it is the "one-shot projection + fine-tune" baseline;
with ``UnifyConfig(unified=0)`` it is magnitude block pruning without unification.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..data import Task, default_dataset, load_task
from ..errors import UserError
from .admm import ADMMState, ResidualStats
from .finetune import freeze_structure_, release_structure_
from .project import project_layer
from .spec import FilterFn, Layer, LayerSpec, UnifyConfig, resolve_specs
from .train import Runtime, Trainer, sync_buffers

Log = Callable[[str], None]


@dataclass(frozen=True)
class Schedule:
    """Epoch budget per phase and the optimizer/ADMM settings."""

    dense_epochs: int = 8
    admm_rounds: int = 4
    round_epochs: int = 2
    finetune_epochs: int = 4
    rho: float = 1e-2
    rho_growth: float = 1.3
    lr: float = 2e-3
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        counts = (self.dense_epochs, self.admm_rounds, self.round_epochs, self.finetune_epochs)
        if min(counts) < 0:
            raise UserError("epoch and round counts must be >= 0")
        if self.rho <= 0 or self.rho_growth < 1 or self.lr <= 0 or self.batch_size <= 0:
            raise UserError("rho, lr and batch size must be > 0 and rho growth >= 1")

    @classmethod
    def from_epochs(cls, epochs: int, pretrained: bool = False, **overrides: object) -> "Schedule":
        """Split a total epoch budget: 40% dense (fresh models only), then 2/3 ADMM and 1/3 fine-tune."""
        if epochs < 2:
            raise UserError(f"--epochs must be at least 2 (got {epochs})")
        dense = 0 if pretrained else round(0.4 * epochs)
        rest = epochs - dense
        finetune = max(1, rest // 3)
        round_epochs = 2 if rest - finetune >= 4 else 1
        rounds = (rest - finetune) // round_epochs
        return cls(dense, rounds, round_epochs, epochs - dense - rounds * round_epochs, **overrides)

    @property
    def total_epochs(self) -> int:
        return self.dense_epochs + self.admm_rounds * self.round_epochs + self.finetune_epochs


@dataclass
class RoundReport:
    """One ADMM round: task loss, test accuracy, primal residual and satisfied blocks."""

    round: int
    rho: float
    loss: float
    accuracy: float
    residual: ResidualStats


@dataclass
class UnifyReport:
    """What a run measured: accuracies per phase, ADMM rounds, time."""

    data: str
    dense_accuracy: float | None = None
    projected_accuracy: float | None = None
    final_accuracy: float | None = None
    rounds: list[RoundReport] = field(default_factory=list)
    seconds: float = 0.0
    schedule: Schedule | None = None


def unify_(
    model: nn.Module, config: UnifyConfig = UnifyConfig(), filter_fn: FilterFn | None = None
) -> dict[str, tuple[Layer, LayerSpec]]:
    """One-shot unification in place: project every selected layer's weight; no data needed.

    Works on any ``nn.Module`` and on (traced) ``ScriptModule``s; returns the layers it constrained.
    """
    layers = _constrained_layers(model, config, filter_fn)
    with torch.no_grad():
        for layer, spec in layers.values():
            layer.weight.copy_(project_layer(layer.weight, spec)[0])
    return layers


def train_dense(
    model: nn.Module,
    input_shape: tuple[int, ...],
    epochs: int,
    *,
    data: str | Task | None = None,
    schedule: Schedule = Schedule(),
    runtime: Runtime | None = None,
    progress: bool = True,
) -> tuple[nn.Module, float]:
    """Plain training (no constraint) for ``epochs``; returns the model and its test accuracy.

    The common starting point when comparing unification methods from one dense network.
    """
    trainer = _trainer(model, input_shape, data, schedule, runtime, epochs, progress)
    model = model.to(trainer.runtime.device)
    accuracy = _dense_phase(trainer, model, epochs, schedule.lr)
    trainer.close()
    return model, accuracy


def train_unify(
    model: nn.Module,
    input_shape: tuple[int, ...],
    config: UnifyConfig = UnifyConfig(),
    schedule: Schedule = Schedule(),
    *,
    data: str | Task | None = None,
    filter_fn: FilterFn | None = None,
    runtime: Runtime | None = None,
    progress: bool = True,
    log: Log = print,
) -> tuple[nn.Module, dict[str, tuple[Layer, LayerSpec]], UnifyReport]:
    """Train ``model`` into the unified structure; returns the (plain, exactly structured) model, its
    constrained layers and a report. Runs unchanged in one process or under torchrun."""
    trainer = _trainer(model, input_shape, data, schedule, runtime, schedule.total_epochs, progress)
    runtime = trainer.runtime
    model = model.to(runtime.device)
    layers = _constrained_layers(model, config, filter_fn)
    report = UnifyReport(trainer.task.name, schedule=schedule)
    start = time.perf_counter()
    say = log if runtime.main else (lambda _: None)

    report.dense_accuracy = _dense_phase(trainer, model, schedule.dense_epochs, schedule.lr)
    say(f"dense: accuracy {report.dense_accuracy:.4f} on {trainer.task.name} test")
    if schedule.admm_rounds:
        report.rounds = _admm_phase(trainer, model, layers, schedule, say)

    freeze_structure_(model, layers)
    report.projected_accuracy = trainer.accuracy(model, recalibrate=True)
    say(f"hard projection: accuracy {report.projected_accuracy:.4f}")
    wrapped = runtime.wrap(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=schedule.lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(schedule.finetune_epochs, 1))
    for _ in range(schedule.finetune_epochs):
        trainer.epoch(wrapped, optimizer, scheduler=cosine)
    trainer.close()
    release_structure_(model)
    sync_buffers(model, runtime)
    layers = resolve_specs(model, config, filter_fn)  # the plain weights replaced the parametrized ones
    report.final_accuracy = trainer.accuracy(model)
    report.seconds = time.perf_counter() - start
    say(f"fine-tuned: accuracy {report.final_accuracy:.4f} (dense {report.dense_accuracy:.4f}); "
        f"{report.seconds:.1f} s")
    return model, layers, report


def _constrained_layers(
    model: nn.Module, config: UnifyConfig, filter_fn: FilterFn | None
) -> dict[str, tuple[Layer, LayerSpec]]:
    layers = resolve_specs(model, config, filter_fn)
    if not layers:
        raise UserError("no layer to unify: every conv2d/linear layer is skipped by the policy")
    return layers


def _trainer(model, input_shape, data, schedule: Schedule, runtime, epochs: int, progress: bool) -> Trainer:
    runtime = runtime or Runtime.setup()
    task = data if isinstance(data, Task) else load_task(data or default_dataset(input_shape), input_shape,
                                                           seed=schedule.seed)
    torch.manual_seed(schedule.seed)
    return Trainer(task, runtime, schedule.batch_size, schedule.seed, epochs, progress)


def _dense_phase(trainer: Trainer, model: nn.Module, epochs: int, lr: float) -> float:
    """Unconstrained epochs; returns the test accuracy after them."""
    wrapped = trainer.runtime.wrap(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        trainer.epoch(wrapped, optimizer)
    return trainer.accuracy(model)


def _admm_phase(
    trainer: Trainer, model: nn.Module, layers: dict[str, tuple[Layer, LayerSpec]], schedule: Schedule, say: Log
) -> list[RoundReport]:
    """ADMM rounds: W-step epochs on the penalized loss, then the Z/U updates; one report per round."""
    wrapped = trainer.runtime.wrap(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=schedule.lr)
    admm = ADMMState(model, layers, schedule.rho)
    rounds = []
    for index in range(schedule.admm_rounds):
        losses = [trainer.epoch(wrapped, optimizer, admm.penalty) for _ in range(schedule.round_epochs)]
        stats = admm.update()
        accuracy = trainer.accuracy(model, recalibrate=True)
        rounds.append(RoundReport(index + 1, admm.rho, losses[-1], accuracy, stats))
        say(f"round {index + 1}/{schedule.admm_rounds}: rho {admm.rho:.2e} task loss {losses[-1]:.4f} "
            f"accuracy {accuracy:.4f} ||W-Z|| {stats.residual:.4f} (rel {stats.relative:.3f}) "
            f"blocks satisfied {stats.satisfied:.1%}")
        admm.grow(schedule.rho_growth)
    return rounds


def unify_builtin(
    name: str,
    output: str | os.PathLike,
    config: UnifyConfig = UnifyConfig(block=(4, 4)),
    epochs: int = 12,
    progress: bool = False,
    log: Log = print,
    seed: int = 0,
) -> tuple[UnifyReport, dict[str, object]]:
    """Train a built-in model from scratch on its built-in data, unify it and export it to ``output``.

    The short path the demo takes: ``unify_builtin("digits-cnn", "out.pt", epochs=12)`` finishes in
    seconds on two cores. Returns the training report and the exported metadata.
    """
    from ..models import get_builtin
    from .export import export_unified

    builtin = get_builtin(name)
    runtime = Runtime.setup()
    torch.manual_seed(seed)
    model, layers, report = train_unify(builtin.factory(), builtin.input_shape, config,
                                        Schedule.from_epochs(epochs, seed=seed),
                                        runtime=runtime, progress=progress, log=log)
    metadata: dict[str, object] = {"model": name}
    if runtime.main:
        metadata = export_unified(model, output, builtin.input_shape, layers,
                                  {"model": name, **accuracy_metadata(report)})
    return report, metadata


def accuracy_metadata(report: UnifyReport) -> dict[str, object]:
    """Accuracy figures recorded beside the spec in the exported file."""
    return {"data": report.data, "accuracy": report.final_accuracy, "dense_accuracy": report.dense_accuracy}
