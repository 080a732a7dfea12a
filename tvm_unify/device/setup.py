"""One-time, cached set-up of the emulated aarch64 device: an arm64 Debian root, TVM wheels, the plugin.

Everything lands under ``~/.cache/tvm-unify/device/`` (``TVU_CACHE`` moves the cache) and each step
leaves a stamp, so a second call costs nothing and an interrupted one resumes. Only Debian packages
and PyPI are used: ``debootstrap --foreign`` downloads a minimal arm64 root with python3 whose packages
we unpack with ``dpkg-deb -x`` (no second stage, so no binfmt_misc and no chroot are needed), pip
installs the aarch64 wheels into it, and the instruction-counting qemu plugin is compiled against the
``qemu-plugin.h`` of Debian's qemu source package (the binary packages ship no plugin header).
``ensure_guest_packages`` adds other aarch64 wheels (the peer runtimes of ``benchmarks/arm.py``) in a
folder of their own, and the root carries an ARM ``/proc/cpuinfo`` for the libraries that parse it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("TVU_DEBIAN_MIRROR", "http://deb.debian.org/debian")
GUEST_PYTHON = "/usr/bin/python3"
GUEST_SITE = "/opt/tvm-py"
GUEST_WHEELS = ["apache-tvm==0.27.0.post1", "apache-tvm-ffi==0.1.14.post1", "cloudpickle", "psutil",
                "tornado"]
WHEEL_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_17_aarch64")  # bookworm: glibc 2.36
# Cortex-A76 (the a76 preset's core), as its /proc/cpuinfo describes each processor
GUEST_CPUINFO = ("processor\t: {n}\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics "
                 "fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
                 "CPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n")
PLUGIN_SOURCE = Path(__file__).resolve().parent / "guest" / "insn_count.c"
_SETUP_VERSION = "1"


@dataclass(frozen=True)
class DeviceFiles:
    """Where the cached device lives: the arm64 root and the counting plugin (None if unavailable)."""

    root: Path
    plugin: Path | None


def cache_dir() -> Path:
    """The device cache folder (``$TVU_CACHE/device`` or ``~/.cache/tvm-unify/device``)."""
    base = os.environ.get("TVU_CACHE") or Path.home() / ".cache" / "tvm-unify"
    return Path(base) / "device"


def ensure_device_files(log=print) -> DeviceFiles:
    """Set up (or reuse) the arm64 root with TVM and the counting plugin; fast when already cached."""
    _require_tools()
    with _setup_lock():  # two commands starting devices at once set up only once
        root = _ensure_root(cache_dir(), log)
        _install_wheels(root, GUEST_SITE, GUEST_WHEELS, "apache-tvm runtime, RPC dependencies", log)
        _ensure_cpuinfo(root)
        try:
            plugin = _ensure_plugin(cache_dir(), log)
        except UserError as err:  # the device still runs and times; only `bench --count` needs this
            plugin = None
            log(f"[device] instruction counting unavailable: {err}")
    return DeviceFiles(root, plugin)


def ensure_guest_packages(folder: str, wheels: Sequence[str], log=print) -> str:
    """Install aarch64 wheels (e.g. peer runtimes) into the guest folder ``folder`` of the device root,
    once per set of pins, and return ``folder`` for the guest's PYTHONPATH.

    Never into the TVM site the RPC server runs from: a peer's numpy or protobuf must not change what
    the server imports."""
    root = ensure_device_files(log).root
    with _setup_lock():
        _install_wheels(root, folder, list(wheels), ", ".join(wheels), log)
    return folder


@contextmanager
def _setup_lock() -> Iterator[None]:
    """Hold the cache's set-up lock (the cache folder is created first)."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "setup.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _require_tools() -> None:
    missing = [t for t in ("qemu-aarch64", "debootstrap", "dpkg-deb") if shutil.which(t) is None]
    if missing:
        raise UserError(f"the emulated device needs {', '.join(missing)}: apt-get install qemu-user "
                        "debootstrap (bash scripts/tvu.sh installs them)")


def _run(cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    """Run a set-up command; on failure raise a UserError quoting the tail of its output."""
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise UserError(f"device set-up failed while {what}: {tail[0]}")
    return proc


def _ensure_root(cache: Path, log) -> Path:
    """A minimal arm64 Debian root with python3, unpacked without running any arm64 code."""
    root = cache / "root"
    stamp = root / ".tvu-root"
    if stamp.is_file() and stamp.read_text() == _SETUP_VERSION:
        return root
    as_root = _root_prefix()
    log(f"[device] creating an arm64 {SUITE} root with python3 in {root} (about a minute, once)")
    staging = cache / "root.partial"
    shutil.rmtree(staging, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    _run([*as_root, "debootstrap", "--foreign", "--arch=arm64", "--variant=minbase", "--include=python3", SUITE,
          str(staging), DEBIAN_MIRROR], "downloading the arm64 root (debootstrap)")
    for deb in sorted((staging / "var/cache/apt/archives").glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(staging)], f"unpacking {deb.name}")
    (staging / ".tvu-root").write_text(_SETUP_VERSION)
    shutil.rmtree(root, ignore_errors=True)
    staging.rename(root)
    return root


def _root_prefix() -> list[str]:
    """debootstrap insists on root; an ordinary user gets it through fakeroot (devices are faked too)."""
    if os.geteuid() == 0:
        return []
    if shutil.which("fakeroot") is None:
        raise UserError("setting up the device as a normal user needs fakeroot (apt-get install fakeroot), "
                        "or run the first `tvm-unify device start` as root")
    return ["fakeroot"]


def _install_wheels(root: Path, folder: str, wheels: list[str], what: str, log) -> None:
    """aarch64 wheels from PyPI into the guest folder ``folder`` of the root; its stamp holds the pins, so
    it is reinstalled only when they change."""
    site = root / folder.lstrip("/")
    stamp = site / ".tvu-wheels"
    want = " ".join(wheels)
    if stamp.is_file() and stamp.read_text() == want:
        return
    log(f"[device] installing aarch64 wheels ({what}) into the root")
    shutil.rmtree(site, ignore_errors=True)
    platforms = [arg for platform in WHEEL_PLATFORMS for arg in ("--platform", platform)]
    _run([sys.executable, "-m", "pip", "install", "-q", "--target", str(site), *platforms, "--python-version", "3.11",
          "--implementation", "cp", "--abi", "cp311", "--only-binary=:all:", *wheels],
         f"installing aarch64 wheels ({what}) with pip")
    _byte_compile(root, site)
    stamp.write_text(want)


def _ensure_cpuinfo(root: Path) -> None:
    """An ARM ``/proc/cpuinfo`` in the root: one Cortex-A76 entry per host CPU.

    qemu user mode passes the host's /proc/cpuinfo (x86 text) through, and pytorch/cpuinfo, which ONNX
    Runtime and XNNPACK initialize at load, then finds no ARM processor and dereferences NULL (ONNX
    Runtime segfaults on import). qemu opens a path inside its library prefix first when the file
    exists there, so the guest reads this one. The libraries take the ISA (NEON, dotprod, SME...) from
    the HWCAP words qemu sets for the emulated CPU, not from this text; the part number can only change
    which of their per-core tuned micro-kernel variants they pick: those of a phone's Cortex-A76."""
    path = root / "proc" / "cpuinfo"
    text = "\n".join(GUEST_CPUINFO.format(n=n) for n in _host_cpus())
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _host_cpus() -> list[int]:
    """The host's possible CPU numbers (sysfs, which qemu passes through to the guest as they are)."""
    try:
        spans = Path("/sys/devices/system/cpu/possible").read_text().strip().split(",")
    except OSError:
        return list(range(os.cpu_count() or 1))
    bounds = [[int(v) for v in span.split("-")] for span in spans if span]
    return [n for b in bounds for n in range(b[0], b[-1] + 1)]


def _byte_compile(root: Path, site: Path) -> None:
    """Byte-compile the guest stdlib and wheels, so each emulated start skips compiling (~10x faster).

    The host interpreter writes the same .pyc files as the guest's when both are CPython 3.11; on
    any other host the guest compiles them itself under emulation (slower, once).
    """
    targets = [str(root / "usr/lib/python3.11"), str(site)]
    if sys.version_info[:2] == (3, 11):
        subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", *targets],
                       capture_output=True)
    else:
        guest_targets = ["/usr/lib/python3.11", GUEST_SITE]
        subprocess.run(["qemu-aarch64", "-L", str(root), str(root / GUEST_PYTHON.lstrip("/")), "-m",
                        "compileall", "-q", *guest_targets], capture_output=True)


def _ensure_plugin(cache: Path, log) -> Path:
    """Compile the instruction-counting plugin against the qemu-plugin.h of the installed qemu."""
    version = _qemu_source_version()
    plugin_dir = cache / "plugin"
    plugin = plugin_dir / f"libinsn_count-{version.replace(':', '_')}.so"
    if plugin.is_file() and plugin.stat().st_mtime >= PLUGIN_SOURCE.stat().st_mtime:
        return plugin
    header_dir = _qemu_plugin_header(plugin_dir, version, log)
    if shutil.which("gcc") is None:
        raise UserError("gcc is needed to build the counting plugin (apt-get install gcc)")
    plugin_dir.mkdir(parents=True, exist_ok=True)
    tmp = plugin.with_suffix(".partial.so")
    _run(["gcc", "-shared", "-fPIC", "-O2", f"-I{header_dir}", "-o", str(tmp), str(PLUGIN_SOURCE)],
         "compiling the counting plugin")
    tmp.rename(plugin)
    return plugin


def _qemu_source_version() -> str:
    proc = subprocess.run(["dpkg-query", "-W", "-f", "${source:Version}", "qemu-user"],
                          capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise UserError("Debian's qemu-user package is not installed (apt-get install qemu-user)")
    return proc.stdout.strip()


def _qemu_plugin_header(plugin_dir: Path, version: str, log) -> Path:
    """Fetch Debian's qemu source package (private apt lists with deb-src) and extract qemu-plugin.h."""
    include = plugin_dir / f"include-{version.replace(':', '_')}"
    if (include / "qemu-plugin.h").is_file():
        return include
    log(f"[device] downloading Debian's qemu {version} source for the plugin header (once)")
    apt_dir = plugin_dir / "apt"
    (apt_dir / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (apt_dir / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    security = DEBIAN_MIRROR.rstrip("/") + "-security"
    (apt_dir / "sources.list").write_text(
        f"deb-src {DEBIAN_MIRROR} {SUITE} main\ndeb-src {DEBIAN_MIRROR} {SUITE}-updates main\n"
        f"deb-src {security} {SUITE}-security main\n")
    opts = ["-o", f"Dir::Etc::SourceList={apt_dir / 'sources.list'}", "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={apt_dir / 'lists'}", "-o", f"Dir::Cache={apt_dir / 'cache'}",
            "-o", "APT::Sandbox::User=root"]
    _run(["apt-get", *opts, "update", "-qq"], "reading Debian's source index (apt-get update)")
    src = plugin_dir / "src"
    src.mkdir(exist_ok=True)
    _run(["apt-get", *opts, "source", "--download-only", "-qq", f"qemu={version}"],
         f"downloading the qemu {version} source package", cwd=src)
    tarballs = sorted(src.glob("qemu_*.orig.tar.*"))
    if not tarballs:
        raise UserError(f"no qemu orig tarball downloaded into {src}")
    with tarfile.open(tarballs[-1]) as tar:
        member = next((m for m in tar if m.name.endswith("include/qemu/qemu-plugin.h")), None)
        if member is None:
            raise UserError(f"{tarballs[-1].name} has no include/qemu/qemu-plugin.h")
        include.mkdir(parents=True, exist_ok=True)
        (include / "qemu-plugin.h").write_bytes(tar.extractfile(member).read())
    for leftover in src.iterdir():
        leftover.unlink()
    return include
