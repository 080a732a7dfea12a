"""The user's own data: an image folder, an ``.npz`` file, or a ``module:factory`` that builds it.

* ``DIR``: ImageFolder layout, one sub-folder per class (sorted names = labels 0, 1, ...); with
  ``DIR/train`` and ``DIR/val`` (or ``DIR/test``) the validation split is given, else one is drawn.
  Images are read with Pillow, converted to the model's channels (L or RGB), resized to the model's
  input size and normalized ``(x - mean) / std`` per channel.
* ``file.npz``: arrays ``x`` (samples shaped like the model input) and ``y`` (class indices), and
  optionally ``x_val``/``y_val``.
* ``module:factory``: imported from the working directory and called with no arguments; returns
  ``(train, val)`` (datasets or DataLoaders; ``val`` may be None) or a mapping with keys ``train``,
  ``val`` and optionally ``loss`` and ``metric`` (see ``task.py``). A DataLoader is read for its
  dataset only: batching and per-rank sharding are the trainer's.

Every check runs before training and fails with one line naming the file: an empty folder, an image
Pillow cannot read, shapes that do not match the model, labels outside the model's outputs.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from ..errors import UserError
from .task import Task

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
VAL_NAMES = ("val", "valid", "validation", "test")


@dataclass(frozen=True)
class DataOptions:
    """How to read user data: image size and normalization, and the validation share when none is given."""

    image_size: tuple[int, int] | None = None  # default: the model input's H x W
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.25,)
    val_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise UserError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if min(self.std, default=0.0) <= 0:
            raise UserError(f"std must be positive, got {self.std}")


def load_user_data(source: str, input_shape: Sequence[int], options: DataOptions = DataOptions(),
                   num_outputs: int | None = None) -> Task:
    """A ``Task`` from a folder, an ``.npz`` file or ``module:factory`` (see the module docstring).

    ``num_outputs``, the width of the model's output, bounds the class labels when it is known.
    """
    path = Path(source)
    if (path.is_dir() or path.suffix == ".npz") and not input_shape:
        raise UserError(f"{source}: input_shape is needed to shape the samples for the model")
    if path.is_dir():
        task = _image_folder_task(path, tuple(input_shape), options)
    elif path.suffix == ".npz":
        task = _npz_task(path, tuple(input_shape), options)
    elif ":" in source and not path.exists():
        return _factory_task(source, options)
    else:
        raise UserError(f"data {source!r} is not a folder, an .npz file or module:factory")
    if num_outputs is not None and task.num_classes is not None and task.num_classes > num_outputs:
        raise UserError(f"{source}: labels run to {task.num_classes - 1}, out of range for a model with "
                        f"{num_outputs} outputs")
    return task


# --- image folder ---------------------------------------------------------------------------------------------


class ImageFolder(Dataset):
    """Images of ``(path, label)`` read on demand, converted, resized and normalized like the model input."""

    def __init__(self, samples: list[tuple[Path, int]], shape: tuple[int, int, int], mean: Sequence[float],
                 std: Sequence[float]) -> None:
        channels, height, width = shape
        self.samples = samples
        self.mode = {1: "L", 3: "RGB"}.get(channels)
        if self.mode is None:
            raise UserError(f"images need a model input with 1 or 3 channels, not {channels}")
        self.size = (width, height)  # Pillow's order
        self.mean = _per_channel(mean, channels, "mean")
        self.std = _per_channel(std, channels, "std")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        path, label = self.samples[index]
        with _reading(path):
            pixels = np.asarray(_open_image(path).convert(self.mode).resize(self.size), dtype=np.float32) / 255.0
        image = torch.from_numpy(pixels.reshape(self.size[1], self.size[0], -1)).permute(2, 0, 1)
        return (image - self.mean) / self.std, torch.tensor(label)


def _image_folder_task(root: Path, input_shape: tuple[int, ...], options: DataOptions) -> Task:
    if len(input_shape) != 4:
        raise UserError(f"{root}: an image folder needs a model input of shape 1xCxHxW, not {input_shape}")
    channels, height, width = input_shape[1:]
    shape = (channels, *(options.image_size or (height, width)))
    val_dir = next((root / name for name in VAL_NAMES if (root / name).is_dir()), None)
    train_dir = root / "train" if val_dir is not None and (root / "train").is_dir() else root
    classes = _class_names(train_dir)
    train = ImageFolder(_samples(train_dir, classes), shape, options.mean, options.std)
    if val_dir is not None:
        test = ImageFolder(_samples(val_dir, classes), shape, options.mean, options.std)
        return Task(str(root), train, test, len(classes))
    return Task(str(root), *split(train, options.val_fraction, options.seed), len(classes))


def _class_names(root: Path) -> list[str]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise UserError(f"{root}: no class sub-folders (expected ImageFolder layout: {root}/<class>/<image>)")
    return classes


def _samples(root: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """Every image under ``root/<class>/`` with its label; each file's header is read once to fail early."""
    samples = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserError(f"{root / name}: class folder holds no images ({', '.join(IMAGE_SUFFIXES[:3])}, ...)")
        for path in files:
            _open_image(path)
            samples.append((path, label))
    return samples


def _open_image(path: Path) -> Any:
    """Pillow's lazy image (the header is read now, the pixels on first use)."""
    from PIL import Image

    with _reading(path):
        return Image.open(path)


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn Pillow's errors on ``path`` (unknown format, truncated file) into one line naming it."""
    try:
        yield
    except OSError as err:  # PIL.UnidentifiedImageError is an OSError
        raise UserError(f"cannot read image {path}: {err}") from None


def _per_channel(values: Sequence[float], channels: int, what: str) -> torch.Tensor:
    if len(values) not in (1, channels):
        raise UserError(f"{what} needs 1 or {channels} values, got {len(values)}")
    return torch.tensor([float(v) for v in values] * (channels // len(values)))[:, None, None]


# --- .npz -----------------------------------------------------------------------------------------------------


def _npz_task(path: Path, input_shape: tuple[int, ...], options: DataOptions) -> Task:
    try:
        with np.load(path) as arrays:
            found = {name: arrays[name] for name in ("x", "y", "x_val", "y_val") if name in arrays}
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    if "x" not in found or "y" not in found:
        raise UserError(f"{path}: needs arrays x and y (and optionally x_val, y_val); found {', '.join(found)}")
    if ("x_val" in found) != ("y_val" in found):
        raise UserError(f"{path}: x_val and y_val go together")
    train = _tensor_pairs(path, found["x"], found["y"], input_shape, "x", "y")
    labels = [found["y"]]
    if "x_val" in found:
        test = _tensor_pairs(path, found["x_val"], found["y_val"], input_shape, "x_val", "y_val")
        labels.append(found["y_val"])
    else:
        train, test = split(train, options.val_fraction, options.seed)
    return Task(str(path), train, test, int(max(int(y.max(initial=0)) for y in labels)) + 1)


def _tensor_pairs(path: Path, x: np.ndarray, y: np.ndarray, input_shape: tuple[int, ...], xn: str,
                  yn: str) -> TensorDataset:
    sample = tuple(input_shape[1:])
    if len(x) == 0:
        raise UserError(f"{path}: {xn} is empty")
    if x.shape[1:] != sample and int(np.prod(x.shape[1:])) != int(np.prod(sample)):
        raise UserError(f"{path}: {xn} samples are {'x'.join(map(str, x.shape[1:]))}, the model takes "
                        f"{'x'.join(map(str, sample))}")
    if y.shape != (len(x),):
        raise UserError(f"{path}: {yn} has shape {y.shape}, expected ({len(x)},) (one label per {xn} sample)")
    if not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{path}: {yn} must hold integer class labels, not {y.dtype}")
    if int(y.min()) < 0:
        raise UserError(f"{path}: {yn} holds a negative label ({int(y.min())})")
    inputs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).reshape(len(x), *sample)
    return TensorDataset(inputs, torch.from_numpy(y.astype(np.int64)))


# --- module:factory -------------------------------------------------------------------------------------------


def _factory_task(spec: str, options: DataOptions) -> Task:
    made = call_factory(spec)
    if isinstance(made, Mapping):
        unknown = set(made) - {"train", "val", "loss", "metric"}
        if "train" not in made or unknown:
            raise UserError(f"{spec}() must return (train, val) or a mapping with keys train, val, loss, metric")
        train, val, loss, metric = made["train"], made.get("val"), made.get("loss"), made.get("metric")
    elif isinstance(made, (tuple, list)) and len(made) == 2:
        (train, val), loss, metric = made, None, None
    else:
        raise UserError(f"{spec}() returned {type(made).__name__}: expected (train, val) or a mapping")
    train = _as_dataset(spec, train, "train")
    if val is None:
        train, test = split(train, options.val_fraction, options.seed)
    else:
        test = _as_dataset(spec, val, "val")
    for what, fn in (("loss", loss), ("metric", metric)):
        if fn is not None and not callable(fn):
            raise UserError(f"{spec}(): {what} must be callable(output, target)")
    return Task(spec, train, test, None, loss, metric)


def call_factory(spec: str) -> Any:
    """Import ``module.path`` (from the working directory, as ``python -c`` would) and call ``attr()``."""
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UserError(f"cannot import {module_name!r} from {os.getcwd()}: {err}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UserError(f"{module_name} has no callable {attr!r}")
    return factory()


def _as_dataset(spec: str, data: Any, what: str) -> Dataset:
    dataset = data.dataset if isinstance(data, DataLoader) else data
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise UserError(f"{spec}(): {what} is a {type(data).__name__}, not a map-style Dataset or DataLoader")
    if len(dataset) == 0:
        raise UserError(f"{spec}(): {what} is empty")
    return dataset


# --- validation split -----------------------------------------------------------------------------------------


def split(data: Dataset, val_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """A seeded random ``(train, validation)`` split holding ``val_fraction`` of the samples out."""
    count = len(data)
    held = max(1, round(val_fraction * count))
    if count - held < 1:
        raise UserError(f"{count} samples are too few to hold {val_fraction:.0%} out for validation")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(data, order[held:]), Subset(data, order[:held])
