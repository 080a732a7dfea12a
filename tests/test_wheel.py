"""The installed product, not the checkout: a wheel built from the repository and installed without
``-e`` into a fresh venv finds its bundled presets (and the other package data) and compiles for ARM
from another directory."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(cmd: list, cwd: Path) -> str:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed (no dependencies: they are visible from this venv's
    site-packages through a .pth line, which does not run this venv's editable-install hook)."""
    root = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", root / "dist",
          ROOT], root)
    wheel = next((root / "dist").glob("tvm_unify-*.whl"))
    env = root / "venv"
    venv.create(env, with_pip=False)
    site = next((env / "lib").glob("python*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", env / "bin" / "python", "install", "-q", "--no-deps",
          "--no-index", wheel], root)
    return env


def test_wheel_ships_presets_and_compiles_for_arm(installed, tmp_path):
    where = _run([installed / "bin" / "python", "-c", "import tvm_unify; print(tvm_unify.__file__)"], tmp_path)
    assert str(ROOT) not in where and str(installed) in where, where
    listing = _run([installed / "bin" / "tvm-unify", "targets"], tmp_path)
    assert {"arm", "a76", "host"} <= {line.split()[0] for line in listing.splitlines()}
    _run([installed / "bin" / "tvm-unify", "export-builtin", "mlp", "-o", tmp_path / "mlp.pt"], tmp_path)
    out = _run([installed / "bin" / "tvm-unify", "compile", tmp_path / "mlp.pt", "--target", "arm", "-o",
                tmp_path / "mlp.so"], tmp_path)
    assert "for target arm" in out and (tmp_path / "mlp.so").read_bytes()[:4] == b"\x7fELF"


def test_wheel_ships_guest_files_and_opencl_sources(installed):
    site = next((installed / "lib").glob("python*/site-packages")) / "tvm_unify"
    for path in ("device/guest/server.py", "device/guest/counting.py", "device/guest/insn_count.c", "records/README.md",
                 "runtime/opencl_sources/src/backend/opencl/runtime/opencl_module.cc"):
        assert (site / path).is_file() and not (site / path).is_symlink(), path
