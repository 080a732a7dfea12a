"""Training: ADMM beats plain projection, fine-tuning keeps the structure, DDP ranks agree bit for bit."""

from __future__ import annotations

import copy
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tvm_unify.data import load_task
from tvm_unify.models import MLP, DigitsCNN
from tvm_unify.unify.admm import ADMMState
from tvm_unify.unify.finetune import freeze_structure_, release_structure_
from tvm_unify.unify.pipeline import Schedule, train_dense, train_unify, unify_builtin
from tvm_unify.unify.project import FREE, PRUNED, UNIFIED, classify_blocks
from tvm_unify.unify.spec import UnifyConfig, resolve_specs
from tvm_unify.unify.train import Runtime
from unify_helpers import one_torch_thread  # noqa: F401 (autouse fixture)

QUIET = {"progress": False, "log": lambda _: None}


@pytest.fixture(scope="module")
def dense_cnn():
    torch.manual_seed(0)
    model = DigitsCNN()
    accuracy = train_dense(model, 3, input_shape=(1, 1, 8, 8), progress=False)
    assert accuracy > 0.9
    assert len(classify_blocks(model.features[3].weight, (1, 4)).unique()) == 1  # really dense: all free
    return model


def test_admm_beats_one_shot_projection(dense_cnn):
    """A short ADMM run ends far above the same weights merely projected, and reports every round."""
    config = UnifyConfig(block=(4, 4), sparsity=0.9)
    one_shot = train_unify(copy.deepcopy(dense_cnn), config, Schedule(dense_epochs=0, admm_rounds=0, finetune_epochs=0),
                           input_shape=(1, 1, 8, 8), **QUIET)
    model = copy.deepcopy(dense_cnn)
    admm = train_unify(model, config, Schedule(dense_epochs=0, admm_rounds=2, round_epochs=1, finetune_epochs=1),
                       input_shape=(1, 1, 8, 8), **QUIET)
    layers = resolve_specs(model, config)
    assert admm.final_accuracy > one_shot.projected_accuracy + 0.2, (admm, one_shot)
    assert [r.rho for r in admm.rounds] == pytest.approx([Schedule().rho, Schedule().rho_max])  # the cap at the end
    assert all(0 < r.residual.relative and 0 <= r.residual.satisfied <= 1 for r in admm.rounds)
    state = ADMMState(model, layers, rho=1.0)  # the final weights are a fixed point: nothing left to do
    stats = state.update()
    assert stats.residual == 0 and stats.satisfied == 1


def test_admm_residual_shrinks_round_by_round():
    """The default penalty schedule pulls W onto Z: ||W - Z|| / ||W|| falls every round to <= 0.05 and
    almost every block is within tolerance before the hard projection (a small MLP on digits)."""
    torch.manual_seed(0)
    report = train_unify(MLP(), UnifyConfig(block=(4, 4), sparsity=0.75), Schedule.from_epochs(10),
                         input_shape=(1, 64), **QUIET)
    relative = [r.residual.relative for r in report.rounds]
    assert len(relative) >= 4 and all(b < a for a, b in zip(relative, relative[1:])), relative
    assert relative[-1] <= 0.05 and report.rounds[-1].residual.satisfied >= 0.95, report.rounds[-1]
    assert report.rounds[-1].accuracy - report.projected_accuracy <= 0.01


@pytest.mark.parametrize("rounds", [1, 3, 8, 12])
def test_default_rho_reaches_the_cap_at_the_last_round(rounds):
    """Without a growth factor rho climbs geometrically to rho_max at the last round, whatever the round
    count; an explicit factor is kept and capped."""
    schedule = Schedule(admm_rounds=rounds)
    ramp = [schedule.rho_at(i) for i in range(rounds)]
    assert ramp[-1] == pytest.approx(schedule.rho_max if rounds > 1 else schedule.rho)
    assert all(b > a for a, b in zip(ramp, ramp[1:]))
    fixed = Schedule(admm_rounds=rounds, rho_growth=2.0)
    assert [fixed.rho_at(i) for i in range(rounds)] == pytest.approx(
        [min(fixed.rho * 2.0 ** i, fixed.rho_max) for i in range(rounds)])


def test_rho_changes_keep_the_unscaled_dual():
    torch.manual_seed(0)
    model = MLP()
    state = ADMMState(model, resolve_specs(model, UnifyConfig(block=(4, 4))), rho=1.0)
    state.update()
    multiplier = {n: u * state.rho for n, u in state.u.items()}
    state.set_rho(4.0)
    assert all(torch.allclose(state.u[n] * 4.0, multiplier[n]) for n in multiplier)


def test_finetune_trains_scales_and_keeps_structure():
    torch.manual_seed(0)
    model = DigitsCNN()
    layers = resolve_specs(model, UnifyConfig(block=(1, 4), sparsity=0.5, unified=0.5))
    kinds = freeze_structure_(model, layers)
    before = {n: model.get_submodule(n).weight.detach().clone() for n in layers}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = load_task("digits", (1, 1, 8, 8)).train[:64]
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    release_structure_(model)
    for name, (_, spec) in layers.items():
        weight = model.get_submodule(name).weight
        assert isinstance(weight, torch.nn.Parameter) and not torch.equal(weight, before[name])
        measured = classify_blocks(weight, spec.block, spec.layout)
        assert torch.equal(measured == PRUNED, kinds[name] == PRUNED)
        assert torch.all(measured[kinds[name] == UNIFIED] == UNIFIED)
        assert int((kinds[name] == FREE).sum()) > 0


def test_schedule_from_epochs_spends_the_budget():
    for epochs in range(2, 30):
        for pretrained in (False, True):
            schedule = Schedule.from_epochs(epochs, pretrained)
            assert schedule.total_epochs == epochs and schedule.finetune_epochs >= 1
            assert (schedule.dense_epochs == 0) == pretrained or epochs < 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        torch.manual_seed(100 + rank)  # different initial weights: DDP must make rank 0's win
        model = MLP()
        report = train_unify(
            model, UnifyConfig(block=(4, 4), sparsity=0.75),
            Schedule(dense_epochs=1, admm_rounds=2, round_epochs=1, finetune_epochs=1),
            input_shape=(1, 64), runtime=Runtime.setup("cpu"), **QUIET)
        assert Runtime.setup("cpu").world == world
        torch.save({"state": model.state_dict(), "layers": report.layers, "accuracy": report.final_accuracy},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_two_cpu_ranks_end_identical_and_exact(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    first, second = (r["state"] for r in results)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), f"ranks differ in {key}"
    assert results[0]["layers"] == ["net.2"] and results[0]["accuracy"] == results[1]["accuracy"] > 0.5
    kinds = classify_blocks(first["net.2.weight"], (4, 4), "tap")
    assert not bool((kinds == FREE).any()) and int((kinds == PRUNED).sum()) == round(0.75 * kinds.numel())


def test_unify_builtin_trains_and_exports_for_the_demo(tmp_path):
    out = tmp_path / "mlp.pt"
    report, meta = unify_builtin("mlp", out, epochs=3, log=lambda _: None)
    assert out.is_file() and [r["name"] for r in meta["unify"]["layers"]] == ["net.2"]
    assert meta["accuracy"] == report.final_accuracy > 0.8 and report.schedule.total_epochs == 3
