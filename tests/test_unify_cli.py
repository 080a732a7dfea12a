"""`tvm-unify unify` / `inspect` end to end: exported blocks are bit-exactly pruned or unified."""

from __future__ import annotations

import textwrap

import pytest
import torch

from tvm_unify.cli import main
from unify_helpers import NET, one_torch_thread, write_image_folder  # noqa: F401 (autouse fixture)
from tvm_unify.torchscript import load_torchscript
from tvm_unify.unify.project import FREE, PRUNED, classify_blocks, project_weight

TINY = textwrap.dedent("""
    import torch
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.body = nn.Conv2d(8, 16, 3, padding=1)
            self.proj = nn.Conv2d(16, 16, 1)
            self.head = nn.Linear(16, 4)

        def forward(self, x):
            x = torch.relu(self.body(torch.relu(self.stem(x))))
            return self.head(self.proj(x).mean((2, 3)))

    def make():
        torch.manual_seed(0)
        return Tiny()
""")


def assert_exactly_unified(path) -> dict:
    """Every constrained block in the file is all-zero or one magnitude; counts match the metadata."""
    module, meta = load_torchscript(path)
    state = module.state_dict()
    assert meta["unify"]["layers"], "no constrained layer recorded"
    for rec in meta["unify"]["layers"]:
        weight = state[rec["param"]]
        assert list(weight.shape) == rec["weight_shape"]
        kinds = classify_blocks(weight, tuple(rec["block"]), rec["layout"])
        assert not bool((kinds == FREE).any()), f"{rec['name']} has blocks neither pruned nor unified"
        pruned = int((kinds == PRUNED).sum())
        assert pruned == rec["blocks"]["pruned"] == round(rec["target_sparsity"] * kinds.numel())
    return meta


def _fails_cleanly(capsys, argv, output, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not output.exists()


@pytest.fixture
def tiny_module(tmp_path, monkeypatch):
    (tmp_path / "tiny_model.py").write_text(TINY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "tiny_model:make"


def test_one_shot_on_a_user_factory(capsys, tmp_path, tiny_module):
    out = tmp_path / "tiny.pt"
    argv = ["unify", tiny_module, "--one-shot", "--input-shape", "1,3,8,8", "--block", "2x4", "--sparsity", "0.5",
            "-o", str(out)]
    assert main(argv) == 0
    meta = assert_exactly_unified(out)
    records = {r["name"]: r for r in meta["unify"]["layers"]}
    assert list(records) == ["body", "proj"]  # stem (first) and head (last) stay dense
    assert records["body"]["weight_shape"] == [16, 8, 3, 3] and records["body"]["param"] == "body.weight"
    assert meta["input_shape"] == [1, 3, 8, 8]
    printed = capsys.readouterr().out
    assert "body" in printed and "whole model" in printed


def test_one_shot_on_torchscript_equals_projection(capsys, builtin_pt, tmp_path):
    src = builtin_pt("digits-cnn")
    out = tmp_path / "u.pt"
    assert main(["unify", str(src), "--one-shot", "--block", "4x4", "--sparsity", "0.75", "-o", str(out)]) == 0
    assert_exactly_unified(out)
    before = load_torchscript(src)[0].state_dict()
    after = load_torchscript(out)[0].state_dict()
    assert torch.equal(after["features.7.weight"], project_weight(before["features.7.weight"], (4, 4), 0.75))
    assert torch.equal(after["features.0.weight"], before["features.0.weight"])  # first conv untouched
    assert main(["inspect", str(out)]) == 0
    assert "features.10" in capsys.readouterr().out


def test_train_unify_mlp_exports_exact_structure(capsys, tmp_path):
    out = tmp_path / "mlp.pt"
    assert main(["unify", "mlp", "--epochs", "4", "--block", "4x4", "--no-progress", "-o", str(out)]) == 0
    meta = assert_exactly_unified(out)
    assert meta["data"] == "digits" and meta["accuracy"] > 0.8
    printed = capsys.readouterr().out
    assert "round 1/" in printed and "||W-Z||" in printed and "blocks satisfied" in printed


@pytest.mark.parametrize("extra, needle", [
    (["--block", "1x5"], "does not divide"),
    (["--sparsity", "1"], "sparsity must be in [0, 1)"),
    (["--skip", "features.99"], "unknown layer 'features.99'"),
    (["--layer", "features.3:sparsity"], "bad layer spec"),
    (["--block", "four"], "bad block shape"),
    (["--layout", "diagonal"], "unknown layout 'diagonal'"),
])
def test_bad_specs_are_one_line_errors(capsys, tmp_path, extra, needle):
    out = tmp_path / "x.pt"
    _fails_cleanly(capsys, ["unify", "digits-cnn", "--one-shot", *extra, "-o", str(out)], out, needle)


def test_bad_models_are_one_line_errors(capsys, builtin_pt, tmp_path, tiny_module):
    out = tmp_path / "x.pt"
    _fails_cleanly(capsys, ["unify", "nonesuch", "--one-shot", "-o", str(out)], out, "unknown model 'nonesuch'")
    _fails_cleanly(capsys, ["unify", "no_such_module:make", "--one-shot", "-o", str(out)], out, "cannot import")
    _fails_cleanly(capsys, ["unify", tiny_module, "--one-shot", "-o", str(out)], out, "--input-shape")
    _fails_cleanly(capsys, ["unify", str(builtin_pt("mlp")), "-o", str(out)], out, "TorchScript files take --one-shot")
    _fails_cleanly(capsys, ["inspect", str(builtin_pt("mlp"))], out, "carries no unify metadata")


@pytest.mark.slow
def test_done_when_digits_cnn_4x4(capsys, tmp_path):
    """The issue's bar: <= 1 point below dense at >= 16x storage compression of the constrained layers.

    Measured as the mean over three seeds: one run's drop on the 360 test digits moves by more than a
    point from seed to seed and from one CPU model to another (0.0 points on one CI machine, 0.6-1.4 on
    another), so a single seed tested the noise, not the method."""
    from tvm_unify.unify.inspect import summarize

    drops = []
    for seed in (0, 1, 2):
        out = tmp_path / f"digits-{seed}.pt"
        assert main(["unify", "digits-cnn", "--block", "4x4", "--sparsity", "0.75", "--seed", str(seed),
                     "--no-progress", "-o", str(out)]) == 0
        meta = assert_exactly_unified(out)
        drops.append(meta["dense_accuracy"] - meta["accuracy"])
        summary = summarize(out)
        assert summary.constrained_dense_bits / summary.constrained_bits >= 16
    assert sum(drops) / len(drops) <= 0.01, drops


def test_one_shot_on_a_state_dict(capsys, tmp_path):
    from tvm_unify.models import MLP

    weights, out = tmp_path / "mlp-weights.pt", tmp_path / "mlp.pt"
    torch.save(MLP().state_dict(), weights)
    assert main(["unify", "mlp", "--weights", str(weights), "--one-shot", "--block", "2x8", "-o", str(out)]) == 0
    assert_exactly_unified(out)
    state = torch.load(weights)
    after = load_torchscript(out)[0].state_dict()
    assert torch.equal(after["net.2.weight"], project_weight(state["net.2.weight"], (2, 8), 0.75))
    assert torch.equal(after["net.4.bias"], state["net.4.bias"])  # trained weights: no re-calibration
    weights.write_text("junk")
    _fails_cleanly(capsys, ["unify", "mlp", "--weights", str(weights), "--one-shot", "-o", str(tmp_path / "y.pt")],
                   tmp_path / "y.pt", "cannot read weights")


def test_inspect_measures_the_weights_not_the_metadata(capsys, builtin_pt, tmp_path):
    from tvm_unify.torchscript import save_torchscript
    from tvm_unify.unify.inspect import summarize

    out, tampered = tmp_path / "u.pt", tmp_path / "t.pt"
    assert main(["unify", str(builtin_pt("digits-cnn")), "--one-shot", "--block", "1x4", "-o", str(out)]) == 0
    module, meta = load_torchscript(out)
    weight = module.state_dict()["features.7.weight"]
    nonzero = torch.nonzero(weight)[0].tolist()
    with torch.no_grad():
        weight[tuple(nonzero)] *= 1.5  # one unified block stops being unified
    extra = {k: v for k, v in meta.items() if k != "input_shape"}
    save_torchscript(module, tampered, tuple(meta["input_shape"]), extra)
    rows = {r.name: r for r in summarize(tampered).rows}
    assert rows["features.7"].counts["free"] == 1 and not rows["features.7"].matches_metadata
    assert rows["features.3"].matches_metadata
    assert main(["inspect", str(tampered)]) == 0
    assert "differs from recorded spec" in capsys.readouterr().out


def test_done_when_user_model_on_a_user_image_folder(capsys, tmp_path, monkeypatch):
    """`tvm-unify unify mypkg:Net --data ./images --block 4x4 --sparsity 0.75 -o net.pt`, small epochs."""
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text(NET)
    write_image_folder(tmp_path / "images", per_class=10)
    monkeypatch.chdir(tmp_path)
    assert main(["unify", "mypkg:Net", "--data", "./images", "--block", "4x4", "--sparsity", "0.75", "--epochs", "6",
                 "--no-progress", "-o", "net.pt"]) == 0
    meta = assert_exactly_unified(tmp_path / "net.pt")
    assert [r["name"] for r in meta["unify"]["layers"]] == ["body", "proj"] and meta["data"] == "images"
    printed = capsys.readouterr().out
    assert "round 3/3" in printed and "blocks satisfied" in printed and "wrote net.pt" in printed


def test_user_data_errors_speak_in_flags(capsys, tmp_path, monkeypatch):
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text(NET)
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "x.pt"
    _fails_cleanly(capsys, ["unify", "mypkg:Net", "--data", "empty", "-o", str(out)], out, "no class sub-folders")
    _fails_cleanly(capsys, ["unify", "mypkg:Net", "--data", "empty", "--val-fraction", "2", "-o", str(out)], out,
                   "--val-fraction must be in (0, 1)")


def _torchrun_rank(rank: int, world: int, port: int, root: str) -> None:
    """What torchrun does for one rank: the rendezvous environment, then the same command line."""
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    os.chdir(root)
    torch.set_num_threads(1)
    code = main(["unify", "mypkg:Net", "--data", "images", "--block", "4x4", "--sparsity", "0.75", "--epochs", "4",
                 "--device", "cpu", "--no-progress", "-o", "net.pt"])
    torch.save({"code": code}, f"rank{rank}.done")


@pytest.mark.slow
def test_torchrun_two_gloo_ranks_on_an_image_folder(tmp_path):
    """Two processes (gloo, one DistributedSampler shard each) train one model; rank 0 writes it, exactly unified."""
    import socket

    import torch.distributed as dist
    import torch.multiprocessing as mp

    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text(NET)
    write_image_folder(tmp_path / "images", per_class=10)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_torchrun_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    assert not dist.is_initialized()
    assert all(torch.load(tmp_path / f"rank{r}.done")["code"] == 0 for r in range(2))
    assert_exactly_unified(tmp_path / "net.pt")
