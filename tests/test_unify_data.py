"""Data: built-in sets fit the models and are deterministic; user folders, .npz files and factories load,
bad data is one line naming the file; a task of the user's (loss, metric) trains."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from tvm_unify.data import DataOptions, Task, default_dataset, load_task, load_user_data
from tvm_unify.errors import UserError
from tvm_unify.unify.pipeline import Schedule, train_unify
from tvm_unify.unify.project import FREE, PRUNED, classify_blocks
from tvm_unify.unify.spec import UnifyConfig
from unify_helpers import one_torch_thread, write_image_folder  # noqa: F401 (autouse fixture)


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


# --- user data ------------------------------------------------------------------------------------------------

SHAPE = (1, 3, 16, 16)


def test_image_folder_reads_resizes_normalizes_and_splits(tmp_path):
    write_image_folder(tmp_path / "images", size=20)
    task = load_user_data(str(tmp_path / "images"), SHAPE, DataOptions(mean=(0.5,), std=(0.25,)), num_outputs=3)
    assert task.num_classes == 3 and len(task.train) + len(task.test) == 36 and len(task.test) == 4
    x, y = task.train[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and 0 <= int(y) < 3
    assert float(x.min()) >= -2.0 and float(x.max()) <= 2.0  # (p - 0.5) / 0.25 for p in [0, 1]


def test_image_folder_with_its_own_val_split(tmp_path):
    write_image_folder(tmp_path / "d" / "train", per_class=4)
    write_image_folder(tmp_path / "d" / "val", per_class=2)
    task = load_user_data(str(tmp_path / "d"), SHAPE)
    assert (len(task.train), len(task.test)) == (12, 6)


def test_npz_with_and_without_validation_arrays(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((50, 3, 16, 16)).astype(np.float32), rng.integers(0, 3, 50)
    np.savez(tmp_path / "a.npz", x=x, y=y)
    task = load_user_data(str(tmp_path / "a.npz"), SHAPE, DataOptions(val_fraction=0.2))
    assert (len(task.train), len(task.test)) == (40, 10) and task.num_classes == 3
    np.savez(tmp_path / "b.npz", x=x, y=y, x_val=x[:7], y_val=y[:7])
    assert len(load_user_data(str(tmp_path / "b.npz"), SHAPE).test) == 7


def test_factory_returns_loaders_loss_and_metric(tmp_path, monkeypatch):
    (tmp_path / "userdata.py").write_text(textwrap.dedent("""
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        def make():
            data = TensorDataset(torch.randn(20, 4), torch.randn(20, 4))
            return {"train": DataLoader(data, batch_size=5), "val": None,
                    "loss": torch.nn.functional.mse_loss, "metric": lambda out, y: -((out - y) ** 2).mean(1)}
    """))
    monkeypatch.chdir(tmp_path)
    task = load_user_data("userdata:make", (1, 4))
    assert len(task.train) == 18 and len(task.test) == 2 and task.loss is torch.nn.functional.mse_loss
    assert task.metric(torch.zeros(2, 4), torch.zeros(2, 4)).shape == (2,)


def _bad_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_bad_data_is_one_line_naming_the_file(tmp_path):
    x = np.zeros((10, 3, 16, 16), np.float32)
    cases = [
        (str((tmp_path / "empty").mkdir() or tmp_path / "empty"), "no class sub-folders"),
        (_bad_npz(tmp_path / "shape.npz", x=np.zeros((10, 3, 8, 8), np.float32), y=np.zeros(10, int)),
         "the model takes 3x16x16"),
        (_bad_npz(tmp_path / "count.npz", x=x, y=np.zeros(9, int)), "one label per x sample"),
        (_bad_npz(tmp_path / "range.npz", x=x, y=np.full(10, 7)), "out of range"),
        (_bad_npz(tmp_path / "nolabels.npz", x=x), "needs arrays x and y"),
        (str(tmp_path / "missing.dat"), "not a folder, an .npz file or module:factory"),
    ]
    broken = write_image_folder(tmp_path / "broken", per_class=2)
    (broken / "class1" / "bad.png").write_bytes(b"not a png")
    cases.append((str(broken), "bad.png"))
    for source, needle in cases:
        with pytest.raises(UserError) as excinfo:
            load_user_data(source, SHAPE, num_outputs=3)
        message = str(excinfo.value)
        assert "\n" not in message and needle in message, (source, message)
        assert Path(source).name in message, (source, message)


def test_train_unify_any_task_autoencoder_with_reconstruction_loss():
    """A loss and a metric of the user's (reconstruction MSE) drive every phase; the structure is exact."""
    torch.manual_seed(0)
    images = load_task("digits", (1, 64)).train.tensors[0][:512]
    pairs = TensorDataset(images, images)
    task = Task("digits-ae", pairs, TensorDataset(images[:128], images[:128]), None,
                loss=torch.nn.functional.mse_loss, metric=lambda out, y: -((out - y) ** 2).mean(1))
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 32), nn.ReLU(),
                          nn.Linear(32, 64))
    with torch.no_grad():
        untrained = -float(((model(images[:128]) - images[:128]) ** 2).mean())
    report = train_unify(model, UnifyConfig(block=(4, 4), sparsity=0.5),
                         Schedule(dense_epochs=3, admm_rounds=2, finetune_epochs=1), data=task, progress=False,
                         log=lambda _: None)
    assert report.layers == ["2", "4"] and report.final_accuracy > untrained * 2 / 3  # error down by a third
    assert report.dense_accuracy > untrained
    for name in report.layers:
        kinds = classify_blocks(model.get_submodule(name).weight, (4, 4))
        assert not bool((kinds == FREE).any()) and int((kinds == PRUNED).sum()) == kinds.numel() // 2
