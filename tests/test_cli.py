"""The CLI end to end: happy paths, and bad input answered with one line, exit 2, no output left."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tvm_unify.cli import main


def _fails_cleanly(capsys, argv, output, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("tvm-unify: error:") and needle in err, err
    assert not output.exists()
    assert not list(output.parent.glob(f".{output.name}*")), "temp file left behind"


def test_compile_missing_file(capsys, tmp_path):
    out = tmp_path / "m.so"
    _fails_cleanly(capsys, ["compile", str(tmp_path / "nope.pt"), "-o", str(out)], out, "not found")


def test_compile_not_torchscript(capsys, tmp_path):
    bogus = tmp_path / "bogus.pt"
    bogus.write_text("this is not a model")
    out = tmp_path / "m.so"
    _fails_cleanly(capsys, ["compile", str(bogus), "-o", str(out)], out, "not a TorchScript file")


def test_compile_unknown_target(capsys, builtin_pt, tmp_path):
    out = tmp_path / "m.so"
    _fails_cleanly(capsys, ["compile", str(builtin_pt("mlp")), "--target", "pdp11", "-o", str(out)], out,
                   "unknown target 'pdp11'")


@pytest.mark.parametrize("shape, needle", [("1,x,3", "bad input shape"), ("1,0,8,8", "bad input shape"),
                                           ("1,3,8,8", "does not fit the model")])
def test_compile_bad_input_shape(capsys, builtin_pt, tmp_path, shape, needle):
    out = tmp_path / "m.so"
    _fails_cleanly(capsys, ["compile", str(builtin_pt("digits-cnn")), "--input-shape", shape, "-o", str(out)],
                   out, needle)


def test_unsupported_op_names_op_and_layer(capsys, tmp_path):
    import torch
    from torch import nn

    from tvm_unify.torchscript import save_torchscript

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return torch.special.erfcx(self.fc(x))

    pt = tmp_path / "odd.pt"
    save_torchscript(Odd(), pt, (1, 4))
    out = tmp_path / "m.so"
    _fails_cleanly(capsys, ["compile", str(pt), "-o", str(out)], out, "unsupported op special_erfcx")


def test_compile_and_run_host(capsys, builtin_pt, tmp_path):
    so, x_path, y_path = tmp_path / "m.so", tmp_path / "x.npy", tmp_path / "y.npy"
    assert main(["compile", str(builtin_pt("mlp")), "--target", "host", "-o", str(so)]) == 0
    np.save(x_path, np.ones((1, 64), "float32"))
    assert main(["run", str(so), "--input", str(x_path), "-o", str(y_path)]) == 0
    assert np.load(y_path).shape == (1, 10)


def test_run_shape_mismatch_and_foreign_arch(capsys, builtin_pt, tmp_path):
    host_so, arm_so, x_path = tmp_path / "h.so", tmp_path / "a.so", tmp_path / "x.npy"
    assert main(["compile", str(builtin_pt("mlp")), "-o", str(host_so)]) == 0
    assert main(["compile", str(builtin_pt("mlp")), "--target", "arm", "-o", str(arm_so)]) == 0
    np.save(x_path, np.ones((1, 65), "float32"))
    out = tmp_path / "y.npy"
    _fails_cleanly(capsys, ["run", str(host_so), "--input", str(x_path), "-o", str(out)], out, "input mismatch")
    np.save(x_path, np.ones((1, 64), "float32"))
    _fails_cleanly(capsys, ["run", str(arm_so), "--input", str(x_path), "-o", str(out)], out,
                   "built for aarch64")


def test_targets_lists_presets(capsys):
    assert main(["targets"]) == 0
    listed = capsys.readouterr().out
    for name in ["host", "arm", "rpi4", "a76", "a55"]:
        assert name in listed


def test_target_from_json_path(builtin_pt, tmp_path):
    preset = tmp_path / "myboard.json"
    preset.write_text('{"description": "x", "target": {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}, '
                      '"arch": "aarch64", "cross_compiler": "aarch64-linux-gnu-gcc"}')
    so = tmp_path / "m.so"
    assert main(["compile", str(builtin_pt("mlp")), "--target", str(preset), "-o", str(so)]) == 0
    assert so.read_bytes()[18] == 183  # ELF e_machine: aarch64


def test_target_with_bad_core_count(capsys, builtin_pt, tmp_path):
    preset = tmp_path / "myboard.json"
    preset.write_text('{"target": {"kind": "llvm", "num-cores": 0}, "arch": "x86_64"}')
    out = tmp_path / "m.so"
    _fails_cleanly(capsys, ["compile", str(builtin_pt("digits-cnn")), "--target", str(preset), "-o", str(out)], out,
                   "num-cores must be a positive integer")


def test_console_script_export_builtin(tmp_path):
    """`python -m tvm_unify` works as a real process, and a bad name is one line on stderr."""
    out = tmp_path / "m.pt"
    ok = subprocess.run([sys.executable, "-m", "tvm_unify", "export-builtin", "mlp", "-o", str(out)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert out.is_file()
    bad = subprocess.run([sys.executable, "-m", "tvm_unify", "export-builtin", "alexnet", "-o", str(out)],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()] and "unknown built-in model" in bad.stderr


def test_demo_without_device(capsys, tmp_path):
    """The README's main job, minus the emulated device: train-unify, compile host + arm, check host."""
    assert main(["demo", "--workdir", str(tmp_path), "--epochs", "4", "--no-device"]) == 0
    out = capsys.readouterr().out
    assert "demo OK" in out and "aarch64" in out and "lowered" in out


@pytest.mark.slow
def test_demo_full(capsys, tmp_path):
    """The README's main job exactly as a user runs it, the emulated aarch64 device included."""
    assert main(["demo", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "demo OK" in out and "emulated aarch64 device over RPC" in out
    assert (tmp_path / "device-report.md").is_file()


def test_bench_profile_breaks_the_time_down_by_kernel(capsys, builtin_pt, tmp_path):
    so = tmp_path / "mlp.so"
    assert main(["compile", str(builtin_pt("mlp")), "-o", str(so)]) == 0
    assert main(["bench", str(so), "--local", "--profile", "--repeat", "2"]) == 0
    out = capsys.readouterr().out
    assert "time per function" in out and "fused_matmul" in out and "total" in out
    out_file = tmp_path / "x.so"
    _fails_cleanly(capsys, ["bench", str(so), "--profile", "--rpc", "127.0.0.1:9"], out_file, "add --local")
