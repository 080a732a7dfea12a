"""Fixtures shared by the unify tests (imported by name into the test modules that use them)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Training on shared cores: one thread per process is several times faster than two waiting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_image_folder(root, classes: int = 3, per_class: int = 12, size: int = 16):
    """An ImageFolder tree of generated PNGs: class k is a bright square at a class-specific place."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in range(classes):
        folder = root / f"class{label}"
        folder.mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            at = 2 + 4 * label
            pixels[at : at + 4, at : at + 4] = 255
            Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


NET = '''
import torch
from torch import nn


class Net(nn.Module):
    """A small CNN for 3x16x16 images; ``input_shape`` tells tvm-unify its input."""

    input_shape = (1, 3, 16, 16)

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Conv2d(8, 16, 3, padding=1)
        self.proj = nn.Conv2d(16, 16, 1)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        x = torch.relu(self.body(torch.relu(self.stem(x))))
        return self.head(torch.relu(self.proj(x)).mean((2, 3)))
'''
