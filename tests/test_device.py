"""The emulated aarch64 device: set-up, start/stop/status, runs over RPC (direct and tracker), counting.

The device set-up (arm64 root, wheels, plugin: about a minute on a fresh machine, cached in
``~/.cache/tvm-unify/device``) happens once per session in the ``emulated_device`` fixture; those
tests are slow. The CLI's bookkeeping without a device is tested fast.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import numpy as np
import pytest

from tvm_unify.testing import assert_matches, torch_reference
from rpc_servers import cli_error, save_npy, start_tracker
from tvm_unify.runtime.bench import BenchOptions, bench_local
from tvm_unify.cli import main
from tvm_unify.compiler import compile_model
from tvm_unify.device.emulator import device_status, start_device, stop_device
from tvm_unify.frontend import import_torchscript
from tvm_unify.device.procs import free_port, group_alive
from tvm_unify.runtime.rpc import DeviceLost, DeviceSpec, load_remote, time_remote, with_device

# The first set-up on a fresh machine takes about a minute; nothing here should take ten.
pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """An empty device cache, so bookkeeping tests never see (or touch) real devices."""
    monkeypatch.setenv("TVU_CACHE", str(tmp_path / "cache"))


def test_status_and_stop_without_devices(private_cache, capsys):
    assert main(["device", "status"]) == 0
    assert "no emulated devices running" in capsys.readouterr().out
    assert main(["device", "stop", "--port", "9999"]) == 0
    assert "no emulated device recorded on port 9999" in capsys.readouterr().out


def test_start_needs_key_with_tracker(private_cache, capsys):
    err = cli_error(capsys, ["device", "start", "--port", str(free_port()), "--tracker", "127.0.0.1:9190"])
    assert "--tracker and --key go together" in err


def test_start_on_busy_port_is_refused(private_cache, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        err = cli_error(capsys, ["device", "start", "--port", str(port)])
    assert f"port {port} on 127.0.0.1 is already in use" in err


@pytest.fixture(scope="session")
def emulated_device():
    """One emulated aarch64 device on a free loopback port for the whole session."""
    state = start_device(free_port(), log=print)
    yield state
    stop_device(state.port)
    assert not group_alive(state.pid), "emulated device processes survived stop"


@pytest.fixture(scope="module")
def arm_build(builtin_pt, tmp_path_factory):
    """digits-cnn for arm and for the host, an input and the PyTorch reference."""
    root = tmp_path_factory.mktemp("arm-build")
    imported = import_torchscript(builtin_pt("digits-cnn"))
    compile_model(imported, "arm", root / "cnn-arm.so")
    compile_model(imported, "host", root / "cnn-host.so")
    x = np.random.default_rng(2).standard_normal(imported.input_shape).astype("float32")
    ref = torch_reference(imported, x)
    return {"arm": root / "cnn-arm.so", "host": root / "cnn-host.so", "x": save_npy(root / "x.npy", x),
            "ref": save_npy(root / "ref.npy", ref), "ref_array": ref, "root": root}


@pytest.mark.slow
def test_arm_build_runs_on_emulated_device(emulated_device, arm_build, tmp_path, capsys):
    out = tmp_path / "out.npy"
    assert main(["run", str(arm_build["arm"]), "--input", arm_build["x"], "--rpc",
                 f"127.0.0.1:{emulated_device.port}", "--reference", arm_build["ref"], "-o", str(out)]) == 0
    assert_matches(np.load(out), arm_build["ref_array"])
    assert main(["device", "status", "--port", str(emulated_device.port)]) == 0
    assert "running" in capsys.readouterr().out


@pytest.mark.slow
def test_host_library_on_emulated_device_is_refused(emulated_device, arm_build, capsys):
    err = cli_error(capsys, ["run", str(arm_build["host"]), "--input", arm_build["x"], "--rpc",
                             f"127.0.0.1:{emulated_device.port}"])
    assert "built for x86_64" in err


@pytest.mark.slow
def test_bench_count_is_exact_and_report_says_emulated(emulated_device, arm_build, tmp_path, capsys):
    data, report = tmp_path / "b.json", tmp_path / "b.md"
    address = f"127.0.0.1:{emulated_device.port}"
    assert main(["bench", str(arm_build["arm"]), str(arm_build["arm"]), "--rpc", address, "--count",
                 "--repeat", "2", "--input", arm_build["x"], "--reference", arm_build["ref"],
                 "--json", str(data), "--markdown", str(report)]) == 0
    results = json.loads(data.read_text())["results"]
    counts = [r["instructions"] for r in results]
    assert counts[0] == counts[1] > 100_000, counts
    assert all(r["emulated"] and r["arch"] == "aarch64" and r["within_tolerance"] for r in results)
    assert "NOT ARM timings" in report.read_text()
    assert "NOT ARM timings" in capsys.readouterr().out


@pytest.mark.slow
def test_device_via_tracker(arm_build, tmp_path, capsys):
    """A second device on another port, registered with a tracker; run and list through the tracker."""
    tracker = start_tracker(tmp_path)
    port = free_port()
    try:
        assert main(["device", "start", "--port", str(port), "--tracker", tracker.address, "--key", "emu"]) == 0
        assert main(["run", str(arm_build["arm"]), "--input", arm_build["x"], "--tracker", tracker.address,
                     "--key", "emu", "--reference", arm_build["ref"]]) == 0
        assert "output matches" in capsys.readouterr().out
        assert main(["devices", "--tracker", tracker.address]) == 0
        assert f"emu@127.0.0.1:{port}" in capsys.readouterr().out
    finally:
        state = stop_device(port)
        tracker.stop()
    assert state is not None and not group_alive(state.pid)
    assert all(s.port != port for s in device_status())


@pytest.mark.slow
def test_demo_device_step(arm_build, tmp_path, capsys):
    """The demo's last step: its own device, arm build checked vs PyTorch, report next to the host."""
    from tvm_unify.demo import run_on_emulated_device

    x = np.load(arm_build["x"])
    host = {"unified": bench_local(arm_build["host"], [x], arm_build["ref_array"], BenchOptions(repeat=3))}
    remote = run_on_emulated_device(tmp_path, host, {"unified": arm_build["arm"]}, x,
                                    {"unified": arm_build["ref_array"]})["unified"]
    assert remote.max_abs_err <= 1e-4 and remote.instructions > 100_000
    report = (tmp_path / "device-report.md").read_text()
    assert "this host (local)" in report and "(emulated)" in report and "NOT ARM timings" in report
    assert (tmp_path / "device-report.png").is_file()
    assert "NOT ARM timings" in capsys.readouterr().out


def _session_children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (the device forks one per RPC session)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


@pytest.mark.slow
def test_device_survives_a_crashed_session(emulated_device, arm_build, capsys):
    """A session dying mid-benchmark (as on SIGILL/SIGSEGV in a kernel) is reported as a lost device,
    and the device keeps serving the next session."""
    spec = DeviceSpec("127.0.0.1", emulated_device.port)

    def crash(session):
        model = load_remote(session, arm_build["arm"])
        (child,) = _session_children(emulated_device.pid)
        os.kill(child, signal.SIGKILL)
        return time_remote(model, [np.load(arm_build["x"])], repeat=1000)

    with pytest.raises(DeviceLost, match=f"device 127.0.0.1:{emulated_device.port} was lost"):
        with_device(spec, crash)
    assert "session crashed with SIGKILL" in Path(emulated_device.log).read_text()
    assert main(["run", str(arm_build["arm"]), "--input", arm_build["x"], "--rpc", f"127.0.0.1:{emulated_device.port}",
                 "--reference", arm_build["ref"]]) == 0
