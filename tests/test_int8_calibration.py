"""int8 activation-scale calibration: scales are max|input|/127 per layer over the samples (for traced,
scripted and eager models), a calibrated int8 build matches the fake-quant reference with those static
scales, the layers too inexact in int8 stay fp32 (sensitivity search), and the CLI path rejects arrays that do
not fit with one line and no output."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tvm_unify.testing import assert_matches
from tvm_unify.testing import fake_quant_reference, input_abs_max_scales, int8_rtol, torch_reference, unified_model
from tvm_unify.frontend import calibrate_act_scales, int8_fp32_fallback
from tvm_unify.cli import main
from tvm_unify.compiler import compile_model
from tvm_unify.frontend import import_torchscript
from tvm_unify.models import get_builtin
from tvm_unify.runtime.local import run_local
from tvm_unify.torchscript import save_torchscript


def samples_for(name: str, n: int = 6, seed: int = 3) -> np.ndarray:
    shape = get_builtin(name).input_shape
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype("float32")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A unified digits-cnn, its unified layer names and its imported TorchScript file."""
    model, names = unified_model("digits-cnn")
    path = tmp_path_factory.mktemp("calib") / "digits.pt"
    save_torchscript(model, path, get_builtin("digits-cnn").input_shape)
    return model, names, path, import_torchscript(path)


def test_scales_are_input_abs_max_over_samples(digits):
    model, _, _, imported = digits
    samples = samples_for("digits-cnn")
    expected = input_abs_max_scales(model, None, samples)
    assert len(expected) == 5
    for scales in (calibrate_act_scales(imported, samples),  # traced TorchScript, N x input shape
                   calibrate_act_scales(imported, samples.reshape(-1, 1, 8, 8)),  # stacked along the batch
                   calibrate_act_scales(torch.jit.script(model), samples),  # scripted TorchScript
                   calibrate_act_scales(model, samples)):  # eager nn.Module
        assert scales.keys() == expected.keys()
        for name, scale in expected.items():
            assert scales[name] == pytest.approx(scale, rel=1e-6), name


def test_mlp_scales_with_batch_of_four():
    model, _ = unified_model("mlp")
    traced = torch.jit.trace(model, torch.zeros(4, 64))
    samples = np.random.default_rng(4).standard_normal((3, 4, 64)).astype("float32")
    assert calibrate_act_scales(traced, samples) == pytest.approx(input_abs_max_scales(model, None, samples), rel=1e-6)


def test_calibrated_int8_build_matches_static_fake_quant(digits, tmp_path):
    model, names, _, imported = digits
    scales = calibrate_act_scales(imported, samples_for("digits-cnn"))
    so = tmp_path / "calibrated.so"
    result = compile_model(imported, "host", so, mode="int8", calibration=samples_for("digits-cnn"),
                           int8_max_error=math.inf)  # every unified layer int8, as the reference quantizes
    assert "calibrate" in result.timings and sum(e.lowered for e in result.report) == len(names)
    x = np.random.default_rng(1).standard_normal(imported.input_shape).astype("float32")
    unified = {n: scales[n] for n in names}
    reference = fake_quant_reference(model, names, x, scales=unified)
    rtol = int8_rtol(model, names, x)
    assert_matches(run_local(so, x), reference, rtol=rtol)
    assert np.abs(reference - fake_quant_reference(model, names, x)).max() > 1e-4  # static != per-call scales


def test_cli_calibrate(digits, tmp_path, capsys):
    _, _, path, _ = digits
    good, bad = tmp_path / "samples.npy", tmp_path / "bad.npy"
    np.save(good, samples_for("digits-cnn"))
    np.save(bad, np.zeros((4, 1, 9, 8), dtype="float32"))
    out = tmp_path / "m.so"
    assert main(["compile", str(path), "--mode", "int8", "--calibrate", str(good), "-o", str(out)]) == 0
    assert "calibrate" in capsys.readouterr().out and out.is_file()
    failures = {"does not fit the model input 1,1,8,8": ["--mode", "int8", "--calibrate", str(bad)],
                "use them with --mode int8": ["--calibrate", str(good)],
                "without --dense": ["--mode", "int8", "--dense", "--calibrate", str(good)]}
    for message, argv in failures.items():
        failed = tmp_path / "failed.so"
        assert main(["compile", str(path), *argv, "-o", str(failed)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err and not failed.exists(), err


def test_help_says_dynamic_without_calibrate(capsys):
    with pytest.raises(SystemExit):
        main(["compile", "--help"])
    assert "compute the scale from each input at run time" in " ".join(capsys.readouterr().out.split())


def test_the_layer_whose_int8_input_hurts_most_stays_fp32(digits):
    """A layer whose scale is far too coarse (its inputs round to a few levels) is the first to fall back;
    calibrated scales on a small net need no fallback at a loose bound; an impossible bound keeps every
    unified layer fp32."""
    model, names, _, imported = digits
    samples = samples_for("digits-cnn")
    scales = calibrate_act_scales(imported, samples)
    assert int8_fp32_fallback(imported, samples, scales, names, max_error=0.5) == []
    coarse = {**scales, names[1]: scales[names[1]] * 40}
    assert int8_fp32_fallback(imported, samples, coarse, names, max_error=0.05)[0] == names[1]
    assert sorted(int8_fp32_fallback(imported, samples, scales, names, max_error=1e-9)) == sorted(names)


def test_fp32_fallback_layers_run_fp32_kernels(digits, tmp_path, capsys):
    """compile --int8-max-error: the chosen layers get fp32 unified kernels (the report says so) and the
    build matches the fake-quant reference that quantizes only the others."""
    model, names, path, imported = digits
    samples = samples_for("digits-cnn")
    np.save(tmp_path / "samples.npy", samples)
    so = tmp_path / "mixed.so"
    assert main(["compile", str(path), "--mode", "int8", "--calibrate", str(tmp_path / "samples.npy"),
                 "--int8-max-error", "1e-9", "-o", str(so)]) == 0
    out = capsys.readouterr().out
    assert out.count("fp32 (int8 too inexact here)") == len(names)
    x = np.random.default_rng(1).standard_normal(imported.input_shape).astype("float32")
    assert_matches(run_local(so, x), torch_reference(imported, x), rtol=1e-4)  # all fp32: exact
    scales = calibrate_act_scales(imported, samples)
    fallback = int8_fp32_fallback(imported, samples, scales, names, max_error=0.01)
    assert 0 < len(fallback) < len(names)
    result = compile_model(imported, "host", tmp_path / "part.so", mode="int8", calibration=samples,
                           int8_max_error=0.01)
    assert sorted(e.layer for e in result.report if e.fp32_fallback) == sorted(fallback)
    kept = [n for n in names if n not in fallback]
    reference = fake_quant_reference(model, kept, x, scales={n: scales[n] for n in kept})
    assert_matches(run_local(tmp_path / "part.so", x), reference, rtol=int8_rtol(model, kept, x))


def test_int8_max_error_needs_samples(digits, tmp_path, capsys):
    _, _, path, _ = digits
    out = tmp_path / "x.so"
    assert main(["compile", str(path), "--mode", "int8", "--int8-max-error", "0.01", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "needs calibration samples" in err and not out.exists()
    with pytest.raises(SystemExit):
        main(["compile", str(path), "--int8-max-error", "-1", "-o", str(out)])
    assert "positive number or inf" in capsys.readouterr().err and not out.exists()


def test_a_model_trained_on_builtin_data_is_calibrated_on_it(digits, tmp_path, capsys):
    """int8 scales are calibrated by default wherever sample data exists: a file whose metadata names the
    built-in set it was trained on gets its 64 first training inputs, exactly as if given with --calibrate;
    --per-call-scales opts out."""
    from tvm_unify.data import calibration_samples

    model, _, _, imported = digits
    path = tmp_path / "trained.pt"
    save_torchscript(model, path, imported.input_shape, {"data": "digits"})
    samples = calibration_samples("digits", imported.input_shape)
    assert samples.shape == (64, 1, 8, 8)
    np.save(tmp_path / "samples.npy", samples)
    x = np.random.default_rng(2).standard_normal(imported.input_shape).astype("float32")
    outputs = {}
    for label, extra in {"default": [], "explicit": ["--calibrate", str(tmp_path / "samples.npy")],
                         "per-call": ["--per-call-scales"]}.items():
        so = tmp_path / f"{label}.so"
        assert main(["compile", str(path), "--mode", "int8", *extra, "-o", str(so)]) == 0
        said = "calibrated on 64 training inputs of built-in digits" in capsys.readouterr().out
        assert said == (label == "default")
        outputs[label] = run_local(so, x)
    np.testing.assert_array_equal(outputs["default"], outputs["explicit"])
    assert np.abs(outputs["default"] - outputs["per-call"]).max() > 0
