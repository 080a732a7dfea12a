"""What training consumes: a train split, a validation split, and optionally the task's own loss and metric.

Samples are ``(input, target)`` pairs. The target is a class index for the default loss (cross-entropy)
and metric (top-1 accuracy), or anything the task's own ``loss``/``metric`` understand (the input
itself for an autoencoder, say).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.data import Dataset

# loss(output, target) -> scalar to minimize; metric(output, target) -> one score per sample, higher better.
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MetricFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Task:
    """A data set to train on: ``test`` is the held-out split every accuracy is measured on."""

    name: str
    train: Dataset
    test: Dataset
    num_classes: int | None = 10
    loss: LossFn | None = None
    metric: MetricFn | None = None


def top1(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample top-1 correctness (1.0 or 0.0): the default metric."""
    return (output.argmax(1) == target).to(torch.float64)
