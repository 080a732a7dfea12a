"""``tvm-unify tune``: records written and resumed, ``compile`` applying them, unified-kernel knobs that
change the kernel but not its output, planar convs tuned and applied, one-line errors for corrupt
records, dense kernels tuned over RPC, and (slow) tuning with the count runner over RPC on the emulated
aarch64 device."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
import tvm
from torch import nn

from rpc_servers import cli_error
from tvm_unify.cli import main
from tvm_unify.compiler import compile_model, lower_unified
from tvm_unify.frontend import import_torchscript
from tvm_unify.kernels import CpuFeatures, cpu_features, regenerate
from tvm_unify.kernels.planar import OP as PLANAR
from tvm_unify.kernels.recipe import recipe_of
from tvm_unify.models.calibration import calibrate_batchnorm
from tvm_unify.pipeline import codegen_target
from tvm_unify.runtime.local import run_local
from tvm_unify.runtime.rpc import DeviceSpec, parse_address
from tvm_unify.targets import load_target
from tvm_unify.testing import assert_matches, run_kernel, torch_reference, unified_model, unify_model
from tvm_unify.torchscript import save_torchscript
from tvm_unify.tuning.apply import RecordChooser
from tvm_unify.tuning.budget import TRIALS_PER_ITER
from tvm_unify.tuning.model import TRIALS_PER_TASK_UNBOUNDED, prepared_kernels, tune_model, unified_templates
from tvm_unify.tuning.records import DENSE_DIR, UNIFIED_FILE, Records, shipped_root
from tvm_unify.tuning.runners import LocalRunner, RemoteRunner
from tvm_unify.tuning.space import candidates, knobs_of, normalized, options_for
from tvm_unify.tuning.tune import tune_tasks_resumable


@pytest.fixture(scope="module")
def digits_pt(tmp_path_factory):
    """digits-cnn with 4x4 unified blocks at 75% sparsity, as TorchScript."""
    model, _ = unified_model("digits-cnn")
    path = tmp_path_factory.mktemp("tuning") / "digits-u.pt"
    save_torchscript(model, path, (1, 1, 8, 8), {"model": "digits-cnn"})
    return path


@pytest.fixture(scope="module")
def tuned_root(digits_pt, tmp_path_factory):
    """Records of digits-cnn after one 8-trial local run (through the CLI)."""
    root = tmp_path_factory.mktemp("schedules")
    assert main(["tune", str(digits_pt), "--trials", "8", "--schedules", str(root)]) == 0
    return root


def _trials(root) -> dict[str, int]:
    return {key: len(entry["trials"]) for key, entry in Records(root / "host").unified.items()}


def test_tune_writes_records_and_compile_uses_them(digits_pt, tuned_root, tmp_path, capsys):
    records = Records(tuned_root / "host")
    assert sum(_trials(tuned_root).values()) == 8
    # Make one decision deterministic (on a loaded machine the race may keep the default): the best
    # checked candidate of the tuned workload.
    key, entry = next((k, e) for k, e in records.unified.items() if e["trials"])
    best = min((t for t in entry["trials"] if t.get("cost")), key=lambda t: t["cost"])
    entry["decision"] = {"knobs": best["knobs"], "cost": best["cost"], "default": entry["default"]}
    records.save_unified()
    so = tmp_path / "tuned.so"
    assert main(["compile", str(digits_pt), "-o", str(so), "--schedules", str(tuned_root)]) == 0
    out = capsys.readouterr().out
    assert ["tuned", entry["layer"]] in [line.split() for line in out.splitlines()]
    imported = import_torchscript(digits_pt)
    x = np.random.default_rng(1).standard_normal(imported.input_shape).astype("float32")
    assert_matches(run_local(so, x), torch_reference(imported, x))
    untuned = compile_model(imported, "host", tmp_path / "plain.so", schedules=None)
    assert untuned.records is None and "tuned" not in untuned.schedules.values()


def test_resumed_run_adds_to_the_records(digits_pt, tuned_root, tmp_path):
    root = tmp_path / "resume"
    (root / "host").mkdir(parents=True)
    (root / "host" / UNIFIED_FILE).write_text((tuned_root / "host" / UNIFIED_FILE).read_text())
    before = _trials(root)
    tune_model(digits_pt, load_target("host"), root / "host", LocalRunner(), trials=16, log=lambda m: None)
    after = _trials(root)
    assert sum(after.values()) > sum(before.values())
    assert all(after.get(k, 0) >= n for k, n in before.items())


def test_corrupt_records_give_one_line_and_no_write(digits_pt, tmp_path, capsys):
    records = tmp_path / "host" / UNIFIED_FILE
    records.parent.mkdir(parents=True)
    records.write_text('{"format": "tvm-unify-unified-records/1", "workloads": {"a": ')
    err = cli_error(capsys, ["tune", str(digits_pt), "--trials", "8", "--schedules", str(tmp_path)])
    assert "corrupt tuning records" in err and str(records) in err
    assert records.read_text().endswith('"a": ')
    assert sorted(p.name for p in records.parent.iterdir()) == [UNIFIED_FILE]
    err = cli_error(capsys, ["compile", str(digits_pt), "-o", str(tmp_path / "m.so"), "--schedules", str(tmp_path)])
    assert "corrupt tuning records" in err
    assert not (tmp_path / "m.so").exists()


def test_shipped_dense_records_apply_and_agree(digits_pt, tmp_path):
    """The shipped host records hold tuned meta-schedule schedules for digits-cnn's dense kernels:
    compile applies them by default and computes what the untuned build computes."""
    imported = import_torchscript(digits_pt)
    tuned = compile_model(imported, "host", tmp_path / "tuned.so", dense=True)
    assert "tuned" in tuned.schedules.values() and tuned.records == str(shipped_root() / "host")
    compile_model(imported, "host", tmp_path / "plain.so", dense=True, schedules=None)
    x = np.random.default_rng(2).standard_normal(imported.input_shape).astype("float32")
    assert_matches(run_local(tmp_path / "tuned.so", x), run_local(tmp_path / "plain.so", x))


def test_corrupt_dense_records_give_one_line_and_no_library(digits_pt, tmp_path, capsys):
    """A tuned workload whose database line does not parse stops the compile with one line."""
    root = tmp_path / "schedules"
    shutil.copytree(shipped_root() / "host", root / "host")
    workloads = root / "host" / DENSE_DIR / "database_workload.json"
    workloads.write_text("".join(line[: len(line) // 2] + "\n" for line in workloads.read_text().splitlines()))
    output = tmp_path / "m.so"
    err = cli_error(capsys, ["compile", str(digits_pt), "--dense", "-o", str(output), "--schedules", str(root)])
    assert "corrupt tuning records" in err and str(workloads.parent) in err
    assert not output.exists()


def test_planar_convs_are_tuned_and_compile_applies_them(tmp_path, capsys):
    """A dense net with an RGB stem and a depthwise conv (both planar kernels): ``--kernels planar``
    measures and checks their knobs; a decision away from the defaults is applied by compile (report says
    tuned) and the model still computes what PyTorch does."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(),
                        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6())
    save_torchscript(calibrate_batchnorm(net, (1, 3, 12, 12)), tmp_path / "m.pt", (1, 3, 12, 12))
    root = tmp_path / "schedules"
    assert main(["tune", str(tmp_path / "m.pt"), "--dense", "--kernels", "planar", "--trials", "16",
                 "--schedules", str(root)]) == 0
    records = Records(root / "host")
    planar = {e["shape"]: e for e in records.unified.values() if e["op"] == PLANAR}
    assert sorted(planar) == ["depthwise conv2d 8->8 3x3/1 @12x12", "groups=1 conv2d 3->8 3x3/1 @12x12"]
    assert all(e["trials"] and all(t["cost"] for t in e["trials"]) for e in planar.values())
    depthwise = planar["depthwise conv2d 8->8 3x3/1 @12x12"]
    depthwise["decision"] = {"knobs": {"lanes": 4, "rows": 1}, "cost": 1.0, "default": 2.0}
    records.save_unified()
    so = tmp_path / "tuned.so"
    assert main(["compile", str(tmp_path / "m.pt"), "--dense", "-o", str(so), "--schedules", str(root)]) == 0
    lines = [line.split(maxsplit=1) for line in capsys.readouterr().out.splitlines()]
    assert ["tuned", "planar depthwise conv2d 8->8 3x3/1 @12x12"] in lines
    assert ["default", "planar groups=1 conv2d 3->8 3x3/1 @12x12"] in lines
    imported = import_torchscript(tmp_path / "m.pt")
    x = np.random.default_rng(1).standard_normal(imported.input_shape).astype("float32")
    assert_matches(run_local(so, x), torch_reference(imported, x))


def test_a_layer_of_the_same_shape_gets_the_recorded_knobs(digits_pt, tmp_path):
    """Another model's layer with the same shapes but another block pattern: the decision of its shape."""
    layers = []
    lower_unified(import_torchscript(digits_pt), "fp32", tasks=2,
                  choose=lambda layer: layers.append(layer) or layer.options)
    layer = layers[0]
    knobs = {**knobs_of(layer.options), "algorithm": "direct", "row_tasks": 8}
    records = Records(tmp_path)
    records.unified["another-pattern"] = {"shape_key": layer.shape_key, "trials": [],
                                          "decision": {"knobs": knobs, "cost": 1.0, "default": 2.0}}
    chooser = RecordChooser(records)
    assert chooser(layer) == options_for(layer, knobs)
    assert chooser.used == {layer.name: "tuned (shape)"}
    assert RecordChooser(Records(tmp_path / "none"))(layer) == layer.options


def test_tuned_knobs_change_the_kernel_not_its_output(digits_pt):
    """Every knob away from its default, through regeneration from the recipe (epilogue fusion)."""
    layers = []
    lower_unified(import_torchscript(digits_pt), "fp32", tasks=2,
                  choose=lambda layer: layers.append(layer) or layer.options)
    layer = layers[0]
    pool = candidates(layer, CpuFeatures())
    knobs = next(k for k in pool if k["algorithm"] == "direct" and k["max_groups"] == 1 and k["row_tasks"] == 4)
    default_func, default_weight = layer.kernel(layer.options)
    func, weight = layer.kernel(options_for(layer, knobs))
    recipe = recipe_of(func)
    assert (recipe["algorithm"], recipe["row_tasks"], recipe["max_groups"]) == ("direct", 4, 1)
    assert func.script() != default_func.script()
    regenerated = regenerate(recipe, weight.arrays, ())
    assert recipe_of(regenerated)["row_tasks"] == 4 and recipe_of(regenerated)["max_groups"] == 1
    g = layer.dims
    x = np.random.default_rng(0).standard_normal((g.batch, g.in_channels, g.height, g.width)).astype("float32")
    shape = (g.batch, g.out_channels, *g.out_hw)
    ref = run_kernel(default_func, x, default_weight, shape)
    assert_matches(run_kernel(regenerated, x, weight, shape), ref)
    assert_matches(run_kernel(layer.kernel(replace(layer.options, max_groups=1))[0], x, default_weight, shape), ref)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_count_runner_over_rpc_on_the_emulated_device(digits_pt, tmp_path, capsys):
    from tvm_unify.device.emulator import start_device, stop_device
    from tvm_unify.device.procs import free_port

    state = start_device(free_port(), log=print)
    try:
        assert main(["tune", str(digits_pt), "--target", "a76", "--runner", "count", "--rpc",
                     f"127.0.0.1:{state.port}", "--trials", "2", "--schedules", str(tmp_path)]) == 0
    finally:
        stop_device(state.port)
    out = capsys.readouterr().out
    assert "k insn" in out
    entries = json.loads((tmp_path / "a76" / UNIFIED_FILE).read_text())["workloads"]
    measured = [t for e in entries.values() for t in e["trials"]]
    assert len(measured) == 2 and all(e["unit"] == "instructions" for e in entries.values())
    assert all(t["cost"] and float(t["cost"]).is_integer() for t in measured)


def test_odd_images_keep_the_lanes_their_kernel_uses(tmp_path):
    """A 7x7 output (49 pixels) is tiled with overlapping 16-lane vectors: the search space must not round
    the lanes knob down to a divisor of 49 (1), which once measured and recorded scalar kernels."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 32, 1)).eval()
    unify_model(model, (4, 4), 0.5)
    save_torchscript(model, tmp_path / "m.pt", (1, 16, 7, 7))
    layers = []
    lower_unified(import_torchscript(tmp_path / "m.pt"), "fp32",
                  choose=lambda layer: layers.append(layer) or layer.options)
    knobs = normalized(layers[0], knobs_of(layers[0].options))
    assert knobs["lanes"] == 16
    assert "T.vectorized(16)" in layers[0].kernel(options_for(layers[0], knobs))[0].script()


def test_light_stack_gives_the_parser_what_inspect_stack_does():
    """TVMScript's prim_func reads the stack's frames (closure variables) and the source line of frames[2]
    (is_defined_in_class): the fast stack used while tensor_intrin imports must give the same."""
    import inspect

    from tvm_unify.tuning.fast_import import light_stack

    def inner():
        return light_stack(), inspect.stack()

    light, full = inner()
    assert [f.frame for f in light] == [f.frame for f in full]
    assert [(f.filename, f.lineno, f.function) for f in light] == [(f.filename, f.lineno, f.function) for f in full]
    assert [f.code_context for f in light[:3]] == [f.code_context for f in full[:3]]


@pytest.fixture()
def dense_pt(tmp_path):
    """A small dense conv net (two tunable kernels) and the model itself, for the reference."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 10)).eval()
    path = tmp_path / "dense.pt"
    save_torchscript(model, path, (1, 3, 8, 8), {"model": "test"})
    return path, model


def _compiled_matches(path, model, root, tmp_path, target: str = "host") -> None:
    """``compile`` with the records in ``root`` gives a library that computes what the model does."""
    library = tmp_path / "dense.so"
    assert main(["compile", str(path), "--dense", "--target", target, "--schedules", str(root),
                 "-o", str(library)]) == 0
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype("float32")
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run_local(library, x), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.timeout(600)
def test_dense_kernels_are_tuned_over_rpc(dense_pt, tmp_path, capsys):
    """Meta-schedule's candidates are built here and timed on the device (a host RPC server), and
    keep-the-better races there too: records measured, decisions made by the rpc runner, compile applies."""
    from rpc_servers import start_host_servers

    path, model = dense_pt
    (server,) = start_host_servers(tmp_path / "srv")
    try:
        root = tmp_path / "schedules"
        assert main(["tune", str(path), "--dense", "--kernels", "dense", "--trials", "4", "--rpc", server.address,
                     "--schedules", str(root)]) == 0
    finally:
        server.stop()
    records = Records(root / "host")
    measured = [r for r in records.dense_database().get_all_tuning_records() if r.run_secs]
    assert measured and all(float(s) > 0 for r in measured for s in r.run_secs)
    assert records.decisions and all(d["runner"].startswith("rpc") and d["agrees"] for d in records.decisions.values())
    _compiled_matches(path, model, root, tmp_path)


def test_a_time_budget_ends_the_knob_search(digits_pt, tmp_path):
    """``tune --time-budget`` without ``--trials``: each unified layer's share is then its whole knob space
    (up to TRIALS_PER_TASK_UNBOUNDED trials), and the run ends well short of it when the time is out."""
    preset = load_target("host")
    target = codegen_target(preset)
    _, templates = unified_templates(import_torchscript(digits_pt), "fp32", preset, target)
    space = sum(min(TRIALS_PER_TASK_UNBOUNDED, len(t.candidates(cpu_features(target), True))) for t in templates)
    root = tmp_path / "schedules"
    assert main(["tune", str(digits_pt), "--kernels", "unified", "--time-budget", "2", "--schedules", str(root)]) == 0
    assert space >= TRIALS_PER_TASK_UNBOUNDED and sum(_trials(root).values()) < space / 2


def test_a_passed_deadline_stops_meta_schedule_after_one_batch(dense_pt, tmp_path):
    """``--time-budget`` bounds the dense kernels' search too: meta-schedule counts trials only (64 per
    kernel without ``--trials``: hours on a device), so a measure callback ends its session at the first
    batch measured after the deadline, and that batch is kept. A deadline already passed when the session
    starts makes it deterministic (the CLI skips meta-schedule then; called directly it measures one batch)."""
    from rpc_servers import start_host_servers

    path, _ = dense_pt
    preset = load_target("host")
    _, tasks, _ = prepared_kernels(import_torchscript(path).mod, codegen_target(preset))
    target = tvm.target.Target({"num-cores": 2, **codegen_target(preset).export()})
    (server,) = start_host_servers(tmp_path / "srv")
    try:
        device = RemoteRunner(DeviceSpec(*parse_address(server.address, "--rpc address")), preset, timeout=60)
        database = tune_tasks_resumable(tasks, [TRIALS_PER_TASK_UNBOUNDED] * len(tasks), tmp_path / "dense", target,
                                        threads=2, log=lambda _: None, device=device, deadline=time.perf_counter())
    finally:
        server.stop()
    measured = [r for r in database.get_all_tuning_records() if r.run_secs]
    assert tasks and 0 < len(measured) <= TRIALS_PER_ITER * len(tasks) < TRIALS_PER_TASK_UNBOUNDED * len(tasks)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_dense_kernels_are_tuned_with_the_count_runner(dense_pt, tmp_path, capsys):
    """On the emulated aarch64 device, meta-schedule's dense candidates are cross-built here and cost
    their instruction counts; keep-the-better counts too, and compile for the device applies the records."""
    from tvm_unify.device.emulator import start_device, stop_device
    from tvm_unify.device.procs import free_port

    path, _ = dense_pt
    root = tmp_path / "schedules"
    state = start_device(free_port(), log=print)
    try:
        assert main(["tune", str(path), "--target", "a76", "--runner", "count", "--rpc", f"127.0.0.1:{state.port}",
                     "--dense", "--kernels", "dense", "--trials", "4", "--schedules", str(root)]) == 0
    finally:
        stop_device(state.port)
    assert "k insn" in capsys.readouterr().out
    records = Records(root / "a76")
    measured = [r for r in records.dense_database().get_all_tuning_records() if r.run_secs]
    assert measured and records.decisions
    assert all(d["runner"].startswith("count") and d["agrees"] for d in records.decisions.values())
    assert main(["compile", str(path), "--dense", "--target", "a76", "--schedules", str(root),
                 "-o", str(tmp_path / "dense-a76.so")]) == 0


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_dense_kernels_are_tuned_with_meta_schedule(dense_pt, tmp_path, capsys):
    """Meta-schedule's builders import tvm.s_tir.tensor_intrin in every worker; imported the slow way it
    outlasted the build timeout and every dense candidate failed. Now the trials measure, the records
    hold them and compile applies the database."""
    path, model = dense_pt
    root = tmp_path / "schedules"
    assert main(["tune", str(path), "--dense", "--kernels", "dense", "--trials", "4",
                 "--schedules", str(root)]) == 0
    out = capsys.readouterr().out
    assert "0 of 0" not in out and "dense" in out
    measured = [r for r in Records(root / "host").dense_database().get_all_tuning_records() if r.run_secs]
    assert measured  # built and timed, not failed
    _compiled_matches(path, model, root, tmp_path)
