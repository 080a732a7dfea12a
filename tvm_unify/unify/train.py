"""Plain training plumbing shared by every phase: device, torch.distributed, loaders, epochs, evaluation.

The same code runs in one process or under ``torchrun`` (one process per device): ``Runtime.setup``
joins the process group when ``WORLD_SIZE > 1`` (nccl on CUDA, gloo on CPU), ``wrap`` puts the model
in DistributedDataParallel, loaders shard the data per rank, and evaluation sums over the ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Subset
from tqdm import tqdm

from ..data import LossFn, MetricFn, Task, top1
from ..errors import UserError


@dataclass(frozen=True)
class Runtime:
    """Where this process trains: its device and its place among the ranks."""

    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def setup(cls, device: str | None = None) -> "Runtime":
        """Join torch.distributed if launched by torchrun (or already joined); pick CUDA when present."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if device == "cuda" and not torch.cuda.is_available():
            raise UserError("device 'cuda' asked for, but PyTorch sees no CUDA device")
        cuda = torch.cuda.is_available() and device in (None, "cuda")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        dev = torch.device("cuda", local) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(dev)  # before joining, so nccl binds each rank to its own GPU
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
        if dist.is_initialized():
            world = dist.get_world_size()
        return cls(dev, dist.get_rank() if dist.is_initialized() else 0, world)

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to call in training: DDP around ``model`` when distributed, else ``model``."""
        if not self.distributed:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def train_loader(self, data: Dataset, batch_size: int, seed: int) -> DataLoader:
        """Shuffled batches; each rank sees its own shard (call ``set_epoch`` via ``run_epoch``)."""
        if self.distributed:
            sampler = DistributedSampler(data, self.world, self.rank, shuffle=True, seed=seed)
        else:
            sampler = RandomSampler(data, generator=torch.Generator().manual_seed(seed))
        return DataLoader(data, batch_size=batch_size, sampler=sampler, drop_last=len(data) > batch_size)

    def eval_shard(self, data: Dataset) -> Dataset:
        return Subset(data, range(self.rank, len(data), self.world)) if self.distributed else data


class Trainer:
    """Epochs over one task on one runtime, with a single progress bar across all training phases.

    The loss and metric are the task's own when it brings them, else cross-entropy and top-1 accuracy.
    """

    def __init__(self, task: Task, runtime: Runtime, batch_size: int, seed: int, epochs: int, progress: bool) -> None:
        self.task = task
        self.runtime = runtime
        self.loss_fn: LossFn = task.loss or F.cross_entropy
        self.metric: MetricFn = task.metric or top1
        self.loader = runtime.train_loader(task.train, batch_size, seed)
        self.bar = tqdm(total=epochs, desc="unify", unit="epoch", disable=not (progress and runtime.main), leave=False)
        self.epochs_done = 0

    def epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer,
              extra_loss: Callable[[], torch.Tensor] | None = None, scheduler=None) -> float:
        """One epoch (``model`` may be the DDP wrapper); returns the mean task loss."""
        loss = run_epoch(model, self.loader, optimizer, self.runtime, self.epochs_done, self.loss_fn, extra_loss)
        if scheduler is not None:
            scheduler.step()
        self.epochs_done += 1
        self.bar.update()
        self.bar.set_postfix(loss=f"{loss:.3f}")
        return loss

    def accuracy(self, model: nn.Module, recalibrate: bool = False) -> float:
        """The metric on the held-out split; with ``recalibrate``, after re-estimating BatchNorm statistics."""
        if recalibrate:
            recalibrate_batchnorm(model, self.task.train, self.runtime)
        return evaluate(model, self.task.test, self.runtime, self.metric)

    def close(self) -> None:
        self.bar.close()


def run_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    runtime: Runtime,
    epoch: int,
    loss_fn: LossFn = F.cross_entropy,
    extra_loss: Callable[[], torch.Tensor] | None = None,
) -> float:
    """One training epoch; returns the mean task loss (without ``extra_loss``) over this rank's batches."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    model.train()
    total, batches = 0.0, 0
    for x, y in loader:
        x, y = x.to(runtime.device, non_blocking=True), y.to(runtime.device, non_blocking=True)
        loss = loss_fn(model(x), y)
        objective = loss + extra_loss() if extra_loss is not None else loss
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        total += float(loss.detach())
        batches += 1
    return _global_mean(total, batches, runtime)


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, runtime: Runtime, metric: MetricFn = top1,
             batch_size: int = 256) -> float:
    """The mean per-sample ``metric`` over the whole of ``data``, each rank scoring its own shard."""
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=runtime.device)
    for x, y in DataLoader(runtime.eval_shard(data), batch_size=batch_size):
        scores = metric(model(x.to(runtime.device)), y.to(runtime.device)).double()
        sums += torch.stack([scores.sum(), torch.tensor(float(scores.numel()), device=runtime.device,
                                                        dtype=torch.float64)])
    if runtime.distributed:
        dist.all_reduce(sums)
    total, count = sums.tolist()
    return total / max(count, 1)


def _global_mean(total: float, count: int, runtime: Runtime) -> float:
    if not runtime.distributed:
        return total / max(count, 1)
    sums = torch.tensor([total, count], dtype=torch.float64, device=runtime.device)
    dist.all_reduce(sums)
    return float(sums[0] / sums[1].clamp(min=1))


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, data: Dataset, runtime: Runtime, batches: int = 20, batch_size: int = 64
) -> None:
    """Re-estimate BatchNorm statistics on the first training batches after the weights moved.

    The hard projection (and, less so, an ADMM round) rescales layer outputs, so the running statistics
    no longer describe them and the net would be judged with stale normalization. Training itself uses
    batch statistics, and a separate unshuffled loader leaves the training shuffle untouched, so this
    changes what evaluation sees, not the training trajectory.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    for index, (x, _) in enumerate(DataLoader(runtime.eval_shard(data), batch_size=batch_size)):
        if index == batches:
            break
        model(x.to(runtime.device))
    for bn, momentum in zip(norms, momenta):
        bn.momentum = momentum
    sync_buffers(model, runtime)


def sync_buffers(model: nn.Module, runtime: Runtime) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics), so all ranks hold one model."""
    if runtime.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
