"""The unification verbs: ``unify_`` (one-shot projection, no data), ``train_unify`` (ADMM + fine-tune),
``train_dense`` (the plain starting point) and ``unify_builtin`` (train, unify and export a built-in).

``train_unify`` runs up to four phases: dense training (for a fresh model), ADMM rounds (W-step epochs,
Z/U updates, ``rho`` growing), the hard projection, and masked fine-tuning with the structure frozen.
With ``admm_rounds=0`` it is the "one-shot projection + fine-tune" baseline; with
``UnifyConfig(unified=0)`` it is magnitude block pruning without unification. Models are changed in
place, torchao style; the report says what was measured.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import torch
from torch import nn

from ..data import DATASETS, DataOptions, LossFn, MetricFn, Task, default_dataset, load_task, load_user_data
from ..errors import UserError
from .admm import ADMMState, ResidualStats
from .finetune import freeze_structure_, release_structure_
from .project import project_layer
from .spec import FilterFn, Layer, LayerPlan, LayerSpec, UnifyConfig, plan_layers
from .train import Runtime, Trainer, sync_buffers

Log = Callable[[str], None]
DataSource = str | Task | None


@dataclass(frozen=True)
class Schedule:
    """Epoch budget per phase, the optimizer settings and the ADMM penalty schedule.

    The defaults are chosen so that the weights reach the constraint set before the hard projection
    (docs/compression.md has the measurements): one-epoch rounds, ``rho`` growing geometrically from
    ``rho`` to ``rho_max`` (``rho_growth=None``: the factor that reaches it at the last round), and an
    Adam W-step. A penalty too weak for the
    task loss (the former rho 1e-2 x1.3) leaves ``W`` where it was while ``U`` accumulates, so the
    residual grows instead of shrinking.
    """

    dense_epochs: int = 8
    admm_rounds: int = 8
    round_epochs: int = 1
    finetune_epochs: int = 4
    rho: float = 0.5
    rho_growth: float | None = None  # None: reach rho_max at the last round
    rho_max: float = 128.0
    lr: float = 2e-3
    admm_lr: float = 2e-3
    admm_optimizer: str = "adam"
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        counts = (self.dense_epochs, self.admm_rounds, self.round_epochs, self.finetune_epochs)
        if min(counts) < 0:
            raise UserError("epoch and round counts must be >= 0")
        if min(self.rho, self.rho_max, self.lr, self.admm_lr, self.batch_size) <= 0 or self.growth < 1:
            raise UserError("rho, rho_max, lr, admm_lr and batch_size must be > 0 and rho_growth >= 1")
        if self.admm_optimizer not in ("sgd", "adam"):
            raise UserError(f"admm_optimizer must be sgd or adam, not {self.admm_optimizer!r}")

    @classmethod
    def from_epochs(cls, epochs: int, pretrained: bool = False, **overrides: object) -> "Schedule":
        """Split a total epoch budget: 40% dense (fresh models only), then 2/3 one-epoch ADMM rounds and
        1/3 fine-tuning, with ``rho`` growing from ``rho`` to ``rho_max`` over the rounds."""
        if epochs < 2:
            raise UserError(f"epochs must be at least 2 (got {epochs})")
        dense = 0 if pretrained else round(0.4 * epochs)
        rest = epochs - dense
        finetune = max(1, rest // 3)
        return cls(dense, rest - finetune, 1, finetune, **overrides)

    @property
    def total_epochs(self) -> int:
        return self.dense_epochs + self.admm_rounds * self.round_epochs + self.finetune_epochs

    @property
    def growth(self) -> float:
        """The per-round factor of ``rho``: ``rho_growth`` if set, else the one reaching ``rho_max`` at the
        last round (so a schedule with more or fewer rounds still ends at the full penalty)."""
        if self.rho_growth is not None:
            return self.rho_growth
        return reaching_growth(self.rho, self.rho_max, self.admm_rounds)

    def rho_at(self, round_index: int) -> float:
        """The penalty of ADMM round ``round_index`` (0-based): geometric growth, capped."""
        return min(self.rho * self.growth ** round_index, self.rho_max)


def reaching_growth(rho: float, rho_max: float, rounds: int) -> float:
    """The per-round factor that takes ``rho`` to ``rho_max`` at the last of ``rounds`` rounds."""
    return max(1.0, (rho_max / rho) ** (1 / max(rounds - 1, 1)))


@dataclass
class RoundReport:
    """One ADMM round: task loss, held-out metric, primal residual and satisfied blocks."""

    round: int
    rho: float
    loss: float
    accuracy: float
    residual: ResidualStats


@dataclass
class UnifyReport:
    """What a run measured: the metric (top-1 accuracy by default) per phase, ADMM rounds, time, and
    which layers were constrained or left dense (and why)."""

    data: str
    layers: list[str] = field(default_factory=list)
    dense_layers: dict[str, str] = field(default_factory=dict)
    dense_accuracy: float | None = None
    projected_accuracy: float | None = None
    final_accuracy: float | None = None
    rounds: list[RoundReport] = field(default_factory=list)
    seconds: float = 0.0
    schedule: Schedule | None = None


def unify_(model: nn.Module, config: UnifyConfig = UnifyConfig(), filter_fn: FilterFn | None = None) -> nn.Module:
    """One-shot unification in place: project every selected layer's weight; no data needed.

    Works on any ``nn.Module`` and on (traced) ``ScriptModule``s; returns ``model``.
    """
    with torch.no_grad():
        for layer, spec in constrained_layers(model, config, filter_fn).constrained.values():
            layer.weight.copy_(project_layer(layer.weight, spec)[0])
    return model


def train_dense(
    model: nn.Module,
    epochs: int,
    *,
    data: DataSource = None,
    input_shape: Sequence[int] | None = None,
    schedule: Schedule = Schedule(),
    runtime: Runtime | None = None,
    progress: bool = True,
) -> float:
    """Plain training (no constraint) of ``model`` in place for ``epochs``; returns the held-out metric.

    The common starting point when comparing unification methods from one dense network.
    """
    trainer = _trainer(model, data, input_shape, None, schedule, runtime, epochs, progress)
    accuracy = _dense_phase(trainer, model, epochs, schedule.lr)
    trainer.close()
    return accuracy


def train_unify(
    model: nn.Module,
    config: UnifyConfig = UnifyConfig(),
    schedule: Schedule = Schedule(),
    *,
    data: DataSource = None,
    input_shape: Sequence[int] | None = None,
    data_options: DataOptions | None = None,
    loss_fn: LossFn | None = None,
    metric: MetricFn | None = None,
    filter_fn: FilterFn | None = None,
    runtime: Runtime | None = None,
    progress: bool = True,
    log: Log = print,
) -> UnifyReport:
    """Train ``model`` in place into the unified structure (dense, ADMM, hard projection, fine-tune).

    ``data`` is a built-in name, a folder, an ``.npz`` file, ``module:factory`` or a ``Task`` (default:
    the built-in set that fits ``input_shape``). ``loss_fn(output, target)`` and ``metric(output, target)``
    (per-sample scores, higher is better) default to the task's own, else cross-entropy and top-1.
    The model ends as plain parameters whose blocks are exactly pruned or unified. Runs unchanged in
    one process or under torchrun.
    """
    trainer = _trainer(model, data, input_shape, data_options, schedule, runtime, schedule.total_epochs, progress)
    trainer.loss_fn = loss_fn or trainer.loss_fn
    trainer.metric = metric or trainer.metric
    runtime = trainer.runtime
    plan = constrained_layers(model, config, filter_fn)
    layers = plan.constrained
    report = UnifyReport(trainer.task.name, list(layers), plan.dense, schedule=schedule)
    start = time.perf_counter()
    say = log if runtime.main else (lambda _: None)
    for reason in plan.dense.values():
        say(f"kept dense: {reason}")

    report.dense_accuracy = _dense_phase(trainer, model, schedule.dense_epochs, schedule.lr)
    say(f"dense: accuracy {report.dense_accuracy:.4f} on {trainer.task.name} held-out split")
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
    report.final_accuracy = trainer.accuracy(model)
    report.seconds = time.perf_counter() - start
    say(f"fine-tuned: accuracy {report.final_accuracy:.4f} (dense {report.dense_accuracy:.4f}); "
        f"{report.seconds:.1f} s")
    return report


def constrained_layers(model: nn.Module, config: UnifyConfig, filter_fn: FilterFn | None) -> LayerPlan:
    """The config's plan for ``model``; an error if it constrains nothing."""
    plan = plan_layers(model, config, filter_fn)
    if not plan.constrained:
        raise UserError("no layer to unify: every conv2d/linear layer is skipped by the policy")
    return plan


def _trainer(model: nn.Module, data: DataSource, input_shape: Sequence[int] | None, options: DataOptions | None,
             schedule: Schedule, runtime: Runtime | None, epochs: int, progress: bool) -> Trainer:
    runtime = runtime or Runtime.setup()
    model.to(runtime.device)
    task = data if isinstance(data, Task) else load_data(model, data, input_shape, options or DataOptions(seed=schedule.seed))
    torch.manual_seed(schedule.seed)
    return Trainer(task, runtime, schedule.batch_size, schedule.seed, epochs, progress)


def load_data(model: nn.Module, data: str | None, input_shape: Sequence[int] | None, options: DataOptions) -> Task:
    """The ``Task`` that ``data`` names, for ``model`` (whose batch-1 input shape is ``input_shape``, or
    the model's ``input_shape`` attribute)."""
    shape = tuple(input_shape or getattr(model, "input_shape", None) or ())
    if data is None or data in DATASETS:
        if not shape:
            raise UserError("input_shape is needed to pick and shape the built-in data")
        return load_task(data or default_dataset(shape), shape, seed=options.seed)
    return load_user_data(data, shape, options, num_outputs=_num_outputs(model, shape) if shape else None)


@torch.no_grad()
def _num_outputs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """The width of the model's output for one sample: the bound on class labels."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    width = int(model(torch.zeros(input_shape, device=device)).shape[-1])
    model.train(was_training)
    return width


def _dense_phase(trainer: Trainer, model: nn.Module, epochs: int, lr: float) -> float:
    """Unconstrained epochs; returns the held-out metric after them."""
    wrapped = trainer.runtime.wrap(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        trainer.epoch(wrapped, optimizer)
    return trainer.accuracy(model)


def _w_step_optimizer(model: nn.Module, schedule: Schedule) -> torch.optim.Optimizer:
    if schedule.admm_optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=schedule.admm_lr, momentum=0.9)
    return torch.optim.Adam(model.parameters(), lr=schedule.admm_lr)


def _admm_phase(
    trainer: Trainer, model: nn.Module, layers: dict[str, tuple[Layer, LayerSpec]], schedule: Schedule, say: Log
) -> list[RoundReport]:
    """ADMM rounds: W-step epochs on the penalized loss, then the Z/U updates; one report per round."""
    wrapped = trainer.runtime.wrap(model)
    optimizer = _w_step_optimizer(model, schedule)
    admm = ADMMState(model, layers, schedule.rho)
    rounds = []
    for index in range(schedule.admm_rounds):
        admm.set_rho(schedule.rho_at(index))
        losses = [trainer.epoch(wrapped, optimizer, admm.penalty) for _ in range(schedule.round_epochs)]
        stats = admm.update()
        accuracy = trainer.accuracy(model, recalibrate=True)
        rounds.append(RoundReport(index + 1, admm.rho, losses[-1], accuracy, stats))
        say(f"round {index + 1}/{schedule.admm_rounds}: rho {admm.rho:.2e} task loss {losses[-1]:.4f} "
            f"accuracy {accuracy:.4f} ||W-Z|| {stats.residual:.4f} (rel {stats.relative:.3f}) "
            f"blocks satisfied {stats.satisfied:.1%}")
    return rounds


def unify_builtin(
    name: str,
    output: str | os.PathLike,
    config: UnifyConfig = UnifyConfig(block=(4, 4)),
    epochs: int = 12,
    progress: bool = False,
    log: Log = print,
    seed: int = 0,
    dense_output: str | os.PathLike | None = None,
) -> tuple[UnifyReport, dict[str, object]]:
    """Train a built-in model from scratch on its built-in data, unify it and export it to ``output``.

    The short path the demo takes: ``unify_builtin("digits-cnn", "out.pt", epochs=12)`` finishes in
    seconds on two cores. With ``dense_output`` the dense phase runs on its own first and the dense
    model is exported there too, so the same weights before unification can be compiled for
    comparison. Returns the training report and the exported metadata.
    """
    from ..models import get_builtin
    from ..torchscript import save_torchscript
    from .export import export_unified

    builtin = get_builtin(name)
    runtime = Runtime.setup()
    torch.manual_seed(seed)
    model = builtin.factory()
    schedule = Schedule.from_epochs(epochs, seed=seed)
    if dense_output is not None:
        accuracy = train_dense(model, schedule.dense_epochs, input_shape=builtin.input_shape, schedule=schedule,
                               runtime=runtime, progress=progress)
        if runtime.main:
            save_torchscript(model, dense_output, builtin.input_shape, {"model": name, "accuracy": accuracy})
        schedule = replace(schedule, dense_epochs=0)
    report = train_unify(model, config, schedule, input_shape=builtin.input_shape, runtime=runtime,
                         progress=progress, log=log)
    metadata: dict[str, object] = {"model": name}
    if runtime.main:
        metadata = export_unified(model, output, config, input_shape=builtin.input_shape,
                                  metadata={"model": name, **accuracy_metadata(report)})
    return report, metadata


def accuracy_metadata(report: UnifyReport) -> dict[str, object]:
    """Accuracy figures recorded beside the spec in the exported file."""
    return {"data": report.data, "accuracy": report.final_accuracy, "dense_accuracy": report.dense_accuracy}
