"""Built-in data sets, no downloads: scikit-learn's digits and a harder colour variant of them.

* ``digits``: the 1,797 8x8 grey-level digits that ship inside scikit-learn, shaped to the model's
  input (``1x8x8`` images or 64 flat features); a fixed split of 1,437 train / 360 test images.
* ``digits-rgb``: the same digits drawn into ``3xHxW`` images (32x32 for the CIFAR-size nets) with a
  random rotation, scale and shift, random foreground/background colours and pixel noise; the train
  split holds several augmented copies of each train digit, the test split one copy of each test digit
  drawn with other random parameters. Samples are generated on the fly from a per-sample seed, so the
  set is deterministic and costs no memory at 224x224.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from ..errors import UserError
from .task import Task

DATASETS = ("digits", "digits-rgb")
NUM_CLASSES = 10
_TEST_FRACTION = 0.2


def default_dataset(input_shape: tuple[int, ...]) -> str:
    """The built-in data set that fits a model input: 64 values -> digits, 3 channels -> digits-rgb."""
    features = input_shape[1:]
    if math.prod(features) == 64:
        return "digits"
    if len(features) == 3 and features[0] == 3 and min(features[1:]) >= 8:
        return "digits-rgb"
    raise UserError(f"no built-in data set fits input shape {tuple(input_shape)} "
                    "(digits: 64 values such as 1x8x8; digits-rgb: 3xHxW with H, W >= 8)")


def load_task(name: str, input_shape: tuple[int, ...], seed: int = 0, copies: int = 4) -> Task:
    """Load a built-in data set shaped for a model whose (batch-1) input shape is ``input_shape``."""
    if name not in DATASETS:
        raise UserError(f"unknown data set {name!r} (choose from {', '.join(DATASETS)})")
    features = tuple(input_shape[1:])
    train, test = _digits_split()
    if name == "digits":
        if math.prod(features) != 64:
            raise UserError(f"data set digits has 8x8 images; it does not fit input shape {tuple(input_shape)}")
        return Task(name, *(_normalized_digits(x, y, features) for x, y in (train, test)))
    if default_dataset(input_shape) != "digits-rgb":
        raise UserError(f"data set digits-rgb makes 3xHxW images; it does not fit input shape {tuple(input_shape)}")
    size = features[1:]
    return Task(name, AugmentedDigits(*train, size, copies, seed), AugmentedDigits(*test, size, 1, seed + 1))


def calibration_samples(name: str, input_shape: tuple[int, ...], count: int = 64) -> np.ndarray:
    """The first ``count`` training inputs of built-in set ``name`` shaped for ``input_shape``, stacked along
    the batch axis (a multiple of the batch): int8 activation-scale calibration on the data a model was
    trained on."""
    task = load_task(name, input_shape, copies=1)
    count = max(input_shape[0], count // input_shape[0] * input_shape[0])
    return np.stack([task.train[i][0].numpy() for i in range(count)]).astype(np.float32)


def _digits_split() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Fixed train/test split of scikit-learn's digits, pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    cut = int(len(x) * (1 - _TEST_FRACTION))
    return (x[order[:cut]], y[order[:cut]]), (x[order[cut:]], y[order[cut:]])


def _normalized_digits(x: np.ndarray, y: np.ndarray, features: tuple[int, ...]) -> TensorDataset:
    pixels = torch.from_numpy((x - 0.3) / 0.4).reshape(len(x), *features)
    return TensorDataset(pixels, torch.from_numpy(y))


class AugmentedDigits(Dataset):
    """Digits drawn into colour ``3xHxW`` images, each sample from its own fixed random parameters."""

    def __init__(self, x: np.ndarray, y: np.ndarray, size: tuple[int, int], copies: int, seed: int) -> None:
        self.images = torch.from_numpy(x).reshape(-1, 1, 8, 8)
        self.labels = torch.from_numpy(y)
        self.size = tuple(size)
        self.seed = seed
        count = len(x) * copies
        rng = np.random.default_rng(seed)
        self.angle = torch.from_numpy(rng.uniform(-0.35, 0.35, count))  # about +-20 degrees
        self.zoom = torch.from_numpy(rng.uniform(1.0, 1.45, count))  # > 1: the digit fills less of the frame
        self.shift = torch.from_numpy(rng.uniform(-0.25, 0.25, (count, 2)))
        fg = rng.uniform(0, 1, (count, 3))
        bg = rng.uniform(0, 1, (count, 3))
        weak = np.abs(fg.mean(1) - bg.mean(1)) < 0.3  # keep the digit visible
        fg[weak] = np.clip(bg[weak] + np.where(bg[weak].mean(1, keepdims=True) > 0.5, -0.5, 0.5), 0, 1)
        self.fg = torch.from_numpy(fg).float()
        self.bg = torch.from_numpy(bg).float()

    def __len__(self) -> int:
        return len(self.angle)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        base = index % len(self.images)
        cos, sin = math.cos(self.angle[index]), math.sin(self.angle[index])
        zoom = float(self.zoom[index])
        theta = torch.tensor([[cos * zoom, -sin * zoom, float(self.shift[index, 0])],
                              [sin * zoom, cos * zoom, float(self.shift[index, 1])]]).unsqueeze(0)
        grid = F.affine_grid(theta, [1, 1, *self.size], align_corners=False)
        ink = F.grid_sample(self.images[base : base + 1], grid, align_corners=False)[0]
        image = self.bg[index, :, None, None] + (self.fg[index] - self.bg[index])[:, None, None] * ink
        noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + index))
        return (image + 0.1 * noise - 0.5) / 0.25, self.labels[base]
