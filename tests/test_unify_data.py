"""Built-in data sets: shapes fit the models, samples are deterministic, bad requests are one line."""

from __future__ import annotations

import pytest
import torch

from tvm_unify.data import default_dataset, load_task
from tvm_unify.errors import UserError


@pytest.mark.parametrize("shape", [(1, 1, 8, 8), (1, 64)])
def test_digits_fits_both_small_models(shape):
    task = load_task("digits", shape)
    assert len(task.train) == 1437 and len(task.test) == 360
    x, y = task.train[0]
    assert x.shape == shape[1:] and 0 <= int(y) < 10
    labels = torch.stack([task.test[i][1] for i in range(len(task.test))])
    assert len(set(labels.tolist())) == 10


def test_digits_rgb_is_deterministic_and_augmented():
    task = load_task("digits-rgb", (1, 3, 32, 32), copies=2)
    assert len(task.train) == 2 * 1437 and len(task.test) == 360
    x, y = task.train[5]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    again = load_task("digits-rgb", (1, 3, 32, 32), copies=2).train[5][0]
    assert torch.equal(x, again)
    twin, twin_label = task.train[5 + 1437]  # the same digit, other random draw
    assert int(twin_label) == int(y) and not torch.allclose(x, twin, atol=0.5)
    assert x.std() > 0.3  # the digit is visible against the background


def test_default_dataset_and_errors():
    assert default_dataset((1, 1, 8, 8)) == "digits"
    assert default_dataset((1, 3, 32, 32)) == "digits-rgb"
    with pytest.raises(UserError, match="no built-in data set fits"):
        default_dataset((1, 5, 7))
    with pytest.raises(UserError, match="unknown data set"):
        load_task("cifar10", (1, 3, 32, 32))
    with pytest.raises(UserError, match="does not fit"):
        load_task("digits", (1, 3, 32, 32))
