"""RPC run/bench/tracker and their failure modes, against real host-architecture TVM RPC servers.

Host servers stand in for boards here (fast); the emulated aarch64 device has its own slow tests in
test_device.py. Every server and tracker binds 127.0.0.1 and is stopped by process group.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from tvm_unify.testing import assert_matches, torch_reference
from rpc_servers import cli_error, save_npy, start_host_servers, start_tracker
from tvm_unify.runtime.bench import BenchOptions, bench_one
from tvm_unify.cli import main
from tvm_unify.compiler import compile_model
from tvm_unify.frontend import import_torchscript
from tvm_unify.device.procs import free_port, stop_group
from tvm_unify.runtime.rpc import DeviceLost, DeviceSpec

# An RPC call that never returns must fail the test, not hang the suite (fixtures still clean up).
pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def libs(builtin_pt, tmp_path_factory):
    """digits-cnn built for the host and for arm, an input and the PyTorch reference output."""
    root = tmp_path_factory.mktemp("rpc-libs")
    imported = import_torchscript(builtin_pt("digits-cnn"))
    paths = {t: root / f"cnn-{t}.so" for t in ("host", "arm")}
    for target, path in paths.items():
        compile_model(imported, target, path)
    x = np.random.default_rng(1).standard_normal(imported.input_shape).astype("float32")
    ref = torch_reference(imported, x)
    return {"host": paths["host"], "arm": paths["arm"], "x": save_npy(root / "x.npy", x),
            "ref_array": ref, "ref": save_npy(root / "ref.npy", ref), "root": root}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    (srv,) = start_host_servers(tmp_path_factory.mktemp("srv"))
    yield srv
    srv.stop()


@pytest.fixture
def tracker(tmp_path):
    trk = start_tracker(tmp_path)
    yield trk
    trk.stop()


@pytest.fixture
def keyed_servers(tmp_path, tracker):
    """Two host servers registered with the tracker under the key ``hostdev``."""
    servers = start_host_servers(tmp_path, 2, tracker, "hostdev")
    yield servers
    for srv in servers:
        srv.stop()


def test_run_over_rpc_matches_pytorch(libs, server, tmp_path, capsys):
    out = tmp_path / "out.npy"
    assert main(["run", str(libs["host"]), "--input", libs["x"], "--rpc", server.address,
                 "--reference", libs["ref"], "-o", str(out)]) == 0
    assert "output matches" in capsys.readouterr().out
    assert_matches(np.load(out), libs["ref_array"])


def test_bench_table_json_markdown(libs, server, tmp_path, capsys):
    report, data = tmp_path / "bench.md", tmp_path / "bench.json"
    assert main(["bench", str(libs["host"]), str(libs["host"]), "--local", "--rpc", server.address, "--repeat",
                 "3", "--input", libs["x"], "--reference", libs["ref"], "--json", str(data), "--markdown",
                 str(report)]) == 0
    table = capsys.readouterr().out
    assert "median ms" in table and server.address in table and "this host (local)" in table
    results = json.loads(data.read_text())["results"]
    assert [r["device"] for r in results] == ["this host (local)"] * 2 + [server.address] * 2
    assert results[0]["speedup_vs_first"] == pytest.approx(1.0) == results[2]["speedup_vs_first"]
    for r in results:
        t = r["timing"]
        assert 0 < t["min_ms"] <= t["median_ms"] <= t["p90_ms"] and t["repeat"] == 3
        assert r["within_tolerance"] and r["arch"] == "x86_64" and not r["emulated"]
    assert "| cnn-host.so |" in report.read_text()
    assert report.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_bench_reference_mismatch_fails(libs, server, tmp_path, capsys):
    wrong = save_npy(tmp_path / "wrong.npy", libs["ref_array"] + 1.0)
    err = cli_error(capsys, ["bench", str(libs["host"]), "--rpc", server.address, "--repeat", "1",
                             "--input", libs["x"], "--reference", wrong])
    assert "differs from the reference" in err and server.address in err


def test_wrong_architecture_library(libs, server, capsys):
    err = cli_error(capsys, ["run", str(libs["arm"]), "--input", libs["x"], "--rpc", server.address])
    assert "built for aarch64" in err and server.address in err


def test_count_needs_emulated_device(libs, server, capsys):
    err = cli_error(capsys, ["bench", str(libs["host"]), "--rpc", server.address, "--count", "--repeat", "1"])
    assert "cannot count instructions" in err


def test_unreachable_device_fails_fast(libs, capsys):
    address = f"127.0.0.1:{free_port()}"
    start = time.monotonic()
    err = cli_error(capsys, ["run", str(libs["host"]), "--input", libs["x"], "--rpc", address])
    assert "unreachable" in err and address in err
    assert time.monotonic() - start < 15


def test_bad_address_and_options(libs, capsys):
    assert "expected host:port" in cli_error(capsys, ["run", str(libs["host"]), "--input", libs["x"],
                                                      "--rpc", "nowhere"])
    assert "--tracker needs --key" in cli_error(capsys, ["bench", str(libs["host"]), "--tracker",
                                                         "127.0.0.1:9190"])
    assert "--reference needs --input" in cli_error(capsys, ["bench", str(libs["host"]), "--rpc",
                                                             "127.0.0.1:9190", "--reference", libs["ref"]])


def test_tracker_run_and_devices(libs, tracker, keyed_servers, capsys):
    _wait_for_free(tracker, "hostdev", 2, capsys)
    assert main(["devices", "--tracker", tracker.address]) == 0
    listing = capsys.readouterr().out
    assert "hostdev" in listing and all(f":{s.port}" in listing for s in keyed_servers)
    assert main(["run", str(libs["host"]), "--input", libs["x"], "--tracker", tracker.address, "--key",
                 "hostdev", "--reference", libs["ref"]]) == 0
    assert "output matches" in capsys.readouterr().out


def _wait_for_free(tracker, key: str, count: int, capsys, timeout: float = 30) -> None:
    """Servers register with the tracker just after they start listening: wait for ``count`` free."""
    from tvm_unify.runtime.rpc import tracker_summary

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = tracker_summary("127.0.0.1", tracker.port)["queue_info"].get(key, {})
        if info.get("free", 0) >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"{count} {key!r} devices never registered")


def test_tracker_without_free_device_times_out(libs, tracker, capsys):
    start = time.monotonic()
    err = cli_error(capsys, ["run", str(libs["host"]), "--input", libs["x"], "--tracker", tracker.address,
                             "--key", "no-such-board", "--timeout", "2"])
    assert "no free device with key 'no-such-board'" in err and "within 2 s" in err
    assert 2 <= time.monotonic() - start < 15


def test_unreachable_tracker(libs, capsys):
    err = cli_error(capsys, ["run", str(libs["host"]), "--input", libs["x"], "--tracker",
                             f"127.0.0.1:{free_port()}", "--key", "arm"])
    assert "tracker unreachable" in err


def test_tracker_address_that_is_no_tracker(libs, server, capsys):
    err = cli_error(capsys, ["devices", "--tracker", server.address])
    assert f"{server.address} is not a TVM RPC tracker" in err


def _kill_when_serving(servers, delay: float = 0.5) -> threading.Thread:
    """Kill (by process group) the first server that reports a session, shortly after it starts."""

    def watch() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for srv in servers:
                if "connected from" in srv.log.read_text(errors="replace"):
                    time.sleep(delay)
                    stop_group(srv.proc.pid)
                    killed.append(srv)
                    return
            time.sleep(0.1)

    killed: list = []
    thread = threading.Thread(target=watch, daemon=True)
    thread.killed = killed
    thread.start()
    return thread


# Long enough (seconds on the host) for the watcher to kill the device in the middle.
LONG = BenchOptions(warmup=0, repeat=3, number=10000)


def test_device_killed_mid_benchmark(libs, tmp_path):
    (victim,) = start_host_servers(tmp_path)
    try:
        watcher = _kill_when_serving([victim])
        with pytest.raises(DeviceLost, match=f"device 127.0.0.1:{victim.port} was lost"):
            bench_one(DeviceSpec("127.0.0.1", victim.port), libs["host"], None, None, LONG, log=lambda m: None)
        watcher.join(5)
        assert watcher.killed == [victim]
    finally:
        victim.stop()


def test_tracker_retries_on_another_device(libs, tracker, keyed_servers, capsys):
    _wait_for_free(tracker, "hostdev", 2, capsys)
    watcher = _kill_when_serving(keyed_servers)
    messages: list[str] = []
    spec = DeviceSpec("127.0.0.1", tracker.port, key="hostdev", timeout=20)
    result = bench_one(spec, libs["host"], None, None, LONG, log=messages.append)
    watcher.join(5)
    (killed,) = watcher.killed
    (survivor,) = [s for s in keyed_servers if s is not killed]
    assert any(f":{killed.port} was lost" in m and "retrying" in m for m in messages), messages
    assert result.device.endswith(f":{survivor.port}")
