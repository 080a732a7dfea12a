"""TVM's OpenCL runtime for the pinned wheel, built once as a sidecar library and loaded into TVM.

The ``apache-tvm`` wheel ships its runtime with ``USE_OPENCL=OFF``, so ``tvm.opencl(0)`` finds no
device API and OpenCL builds come out as placeholder modules that cannot launch. Device runtimes are
separate libraries in this TVM (``libtvm_runtime_cuda.so`` is one): each registers its globals
(``device_api.opencl``, ``ffi.Module.create.opencl``, ...) from static initialisers when it is loaded.
We compile Apache TVM's own OpenCL runtime sources, vendored in ``third_party/tvm_opencl_runtime``,
against the wheel's headers and libraries and ``-lOpenCL`` (the Khronos ICD loader, which finds PoCL or a
real GPU driver), cache the library under ``$TVU_CACHE/opencl/<key>`` (``~/.cache/tvm-unify/opencl``),
and ``dlopen`` it into the running process. The venv is left untouched: a library dropped next to
``libtvm_runtime.so`` would survive ``pip uninstall`` and be auto-loaded, unchecked, by the next wheel.

Load it **before** ``tvm.compile`` of an OpenCL target: the compiler asks for
``ffi.Module.create.opencl`` while building, and without it keeps the kernels in a module that only
serialises (``export_library`` + ``tvm.runtime.load_module`` after loading still works).

fp16 kernels need ``cl_khr_fp16``, which PoCL's CPU device lacks (Debian's 3.1 and PyPI's
``pocl-binary-distribution`` 3.0 alike). Intel's CPU OpenCL runtime has it on any x86-64 CPU and comes from
PyPI (``intel-opencl-rt``, the ``opencl-fp16`` extra); pip leaves its ICD file pointing at a conda path,
so when it is installed we register it, next to the system's drivers, through a cached ``OCL_ICD_VENDORS``
folder before the ICD loader's first call (``register_pip_drivers``). ``opencl_device`` then picks the
device with the extensions a library needs, the system's drivers first (``opencl_devices`` asks the
ICD loader directly).
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from importlib.metadata import PackageNotFoundError, distribution, version
from pathlib import Path

from ..errors import UserError

# third_party/tvm_opencl_runtime, linked into the package so that a wheel ships it too
SOURCE_DIR = Path(__file__).resolve().parent / "opencl_sources"
SOURCES = ("src/backend/opencl/runtime/opencl_device_api.cc", "src/backend/opencl/runtime/opencl_module.cc")
LIB_NAME = "libtvm_runtime_opencl.so"
# TVM's own flags for runtime objects (CMakeLists.txt: C++20, -O2, hidden visibility, export macros).
CXXFLAGS = ("-std=c++20", "-O2", "-fPIC", "-fvisibility=hidden", "-DNDEBUG", "-DTVM_RUNTIME_EXPORTS",
            "-DTVM_FFI_EXPORTS")

_loaded: dict[str, ctypes.CDLL] = {}  # keeps the dlopen'd sidecar alive; keyed by its path
# The pip-installed OpenCL driver with cl_khr_fp16 (extra opencl-fp16) and its driver library.
FP16_DRIVER, FP16_DRIVER_LIB = "intel-opencl-rt", "libintelocl.so"
FP16_PLATFORM = "Intel(R) OpenCL"  # its platform's name
SYSTEM_VENDORS = Path("/etc/OpenCL/vendors")


def cache_dir() -> Path:
    """The OpenCL runtime cache folder (``$TVU_CACHE/opencl`` or ``~/.cache/tvm-unify/opencl``)."""
    base = os.environ.get("TVU_CACHE") or Path.home() / ".cache" / "tvm-unify"
    return Path(base) / "opencl"


def ensure_opencl_runtime(log=print) -> Path:
    """Build (once, cached) and load TVM's OpenCL runtime; return the library that provides it.

    Idempotent and cheap once built. Raises a one-line UserError when a Debian package is missing,
    when the build fails, or when the OpenCL loader finds no device.
    """
    provider = _load(log)
    if not _device_found():
        raise UserError("TVM's OpenCL runtime is loaded but finds no OpenCL device: install a driver, e.g. "
                        "apt-get install pocl-opencl-icd (a CPU OpenCL device)")
    return provider


def opencl_available() -> bool:
    """Whether ``tvm.opencl(0)`` can run kernels here, loading (and once building) the runtime if needed.

    False when a prerequisite package is missing or no device is found; a failing build still raises,
    since that is a bug to see rather than a machine without OpenCL.
    """
    if _existing_provider() is None and missing_packages():
        return False
    _load(log=lambda _msg: None)
    return _device_found()


def missing_packages() -> list[str]:
    """The Debian packages whose files the OpenCL runtime needs and this machine lacks.

    g++ compiles it, ``opencl-headers`` has CL/opencl.h, ``ocl-icd-opencl-dev`` the libOpenCL.so to link
    (the ICD loader), and ``pocl-opencl-icd`` stands for any registered driver (PoCL is a CPU one).
    """
    if shutil.which("g++") is None:
        return ["g++", *_missing_driver()]  # the header and library probes below need g++ itself
    missing = []
    probe = subprocess.run(["g++", "-E", "-x", "c++", "-", "-o", os.devnull], input="#include <CL/opencl.h>\n",
                           capture_output=True, text=True)
    if probe.returncode != 0:
        missing.append("opencl-headers")
    found = subprocess.run(["g++", "-print-file-name=libOpenCL.so"], capture_output=True, text=True)
    if not os.path.isabs(found.stdout.strip()):  # g++ echoes the bare name when it finds nothing
        missing.append("ocl-icd-opencl-dev")
    return missing + _missing_driver()


def _missing_driver() -> list[str]:
    """``pocl-opencl-icd`` unless the ICD loader has a driver registered (ocl-icd's OCL_ICD_VENDORS or
    /etc/OpenCL/vendors/*.icd)."""
    vendors = Path(os.environ.get("OCL_ICD_VENDORS", "/etc/OpenCL/vendors"))
    registered = vendors.is_file() or (vendors.is_dir() and any(vendors.glob("*.icd")))
    return [] if registered else ["pocl-opencl-icd"]


def _load(log) -> Path:
    """Load the runtime into this process unless TVM already has one; return its library."""
    provider = _existing_provider()
    if provider is None:
        register_pip_drivers()  # before the first OpenCL call, which reads OCL_ICD_VENDORS once
        provider = _ensure_built(log)
        _loaded[str(provider)] = ctypes.CDLL(str(provider), mode=ctypes.RTLD_LOCAL)
    return provider


def pip_driver_library() -> Path | None:
    """Intel's CPU OpenCL driver when its PyPI package (extra ``opencl-fp16``) is installed, else None."""
    try:
        files = distribution(FP16_DRIVER).files or []
    except PackageNotFoundError:
        return None
    found = [Path(f.locate()).resolve() for f in files if f.name == FP16_DRIVER_LIB]
    return next((path for path in found if path.is_file()), None)


def register_pip_drivers() -> Path | None:
    """Point ``OCL_ICD_VENDORS`` at a cached folder holding the system's ICD files plus one for the pip
    driver (its own names a conda prefix); return the folder, or None when there is nothing to add or
    the user set ``OCL_ICD_VENDORS`` (theirs wins). Effective only before the ICD loader's first call."""
    driver = pip_driver_library()
    if driver is None or "OCL_ICD_VENDORS" in os.environ:
        return None
    icds = {p.name: p.read_text() for p in sorted(SYSTEM_VENDORS.glob("*.icd"))} if SYSTEM_VENDORS.is_dir() else {}
    icds[f"{FP16_DRIVER}.icd"] = f"{driver}\n"
    key = hashlib.sha256(repr(sorted(icds.items())).encode()).hexdigest()[:16]
    folder = cache_dir() / f"vendors-{key}"
    if not folder.is_dir():
        folder.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(dir=folder.parent))
        for name, text in icds.items():
            (scratch / name).write_text(text)
        try:
            scratch.rename(folder)  # atomic; a concurrent caller may have won, with the same contents
        except OSError:
            shutil.rmtree(scratch)
    os.environ["OCL_ICD_VENDORS"] = str(folder)
    return folder


@functools.cache
def opencl_devices() -> tuple[tuple[str, str, frozenset[str]], ...]:
    """(platform, device name, extensions) of every OpenCL device, asked of the ICD loader (TVM exposes
    names, not extensions). Cached: the set of drivers is fixed once the loader has started, which this
    call may be the first to do, so the pip driver is registered first."""
    register_pip_drivers()
    cl = ctypes.CDLL("libOpenCL.so.1")
    count = ctypes.c_uint32()
    if cl.clGetPlatformIDs(0, None, ctypes.byref(count)) != 0 or count.value == 0:
        return ()
    platforms = (ctypes.c_void_p * count.value)()
    cl.clGetPlatformIDs(count, platforms, None)
    found = []
    for platform in platforms:
        n = ctypes.c_uint32()
        if cl.clGetDeviceIDs(ctypes.c_void_p(platform), ctypes.c_uint64(0xFFFFFFFF), 0, None, ctypes.byref(n)) != 0:
            continue  # CL_DEVICE_TYPE_ALL; a platform without devices answers an error
        devices = (ctypes.c_void_p * n.value)()
        cl.clGetDeviceIDs(ctypes.c_void_p(platform), ctypes.c_uint64(0xFFFFFFFF), n, devices, None)
        platform_name = _info(cl.clGetPlatformInfo, platform, 0x0902)  # CL_PLATFORM_NAME
        for device in devices:
            name, extensions = (_info(cl.clGetDeviceInfo, device, what) for what in (0x102B, 0x1030))  # NAME, EXTENSIONS
            found.append((platform_name, name, frozenset(extensions.split())))
    return tuple(found)


def device_extensions() -> dict[str, frozenset[str]]:
    """OpenCL device name -> its extensions."""
    return {name: extensions for _, name, extensions in opencl_devices()}


def _info(query, handle: int, what: int) -> str:
    """A string property of an OpenCL platform or device (``clGetPlatformInfo`` / ``clGetDeviceInfo``)."""
    size = ctypes.c_size_t()
    query(ctypes.c_void_p(handle), ctypes.c_uint32(what), 0, None, ctypes.byref(size))
    buffer = ctypes.create_string_buffer(size.value)
    query(ctypes.c_void_p(handle), ctypes.c_uint32(what), size, buffer, None)
    return buffer.value.decode(errors="replace")


FP16_HINT = ("PoCL's CPU device has none; pip install 'tvm-unify[opencl-fp16]' adds Intel's CPU OpenCL runtime, "
             "which has it")


def opencl_device(extensions: tuple[str, ...] = ()):
    """The first of TVM's OpenCL devices that has every one of ``extensions`` (e.g. ``cl_khr_fp16`` for an
    fp16 library), the runtime loaded; a one-line UserError when none has them."""
    import tvm

    ensure_opencl_runtime()
    known = {name: (platform == FP16_PLATFORM, exts) for platform, name, exts in opencl_devices()}
    found = []
    while (dev := tvm.opencl(len(found))).exist:
        found.append(dev)
    # the system's drivers first (TVM orders platforms by handle): fp32 libraries keep running on PoCL
    # when the pip fp16 driver is registered too, which only libraries that need fp16 get
    usable = [dev for dev in found if all(ext in known.get(dev.device_name, (False, ()))[1] for ext in extensions)]
    if usable:
        return min(usable, key=lambda dev: known.get(dev.device_name, (False,))[0])
    names = ", ".join(dev.device_name for dev in found) or "none"
    hint = f": {FP16_HINT}" if "cl_khr_fp16" in extensions else ""
    raise UserError(f"no OpenCL device here has {' '.join(extensions)} (devices: {names}){hint}")


def _device_found() -> bool:
    import tvm

    return bool(tvm.opencl(0).exist)


def _existing_provider() -> Path | None:
    """The library already serving ``device_api.opencl`` (ours, or one TVM found itself), if any.

    Loading a second copy registers the same globals twice, which aborts the process (checked).
    """
    import tvm  # loads libtvm_runtime.so, which the sidecar links to and registers into
    import tvm_ffi

    if tvm_ffi.get_global_func("device_api.opencl", allow_missing=True) is None:
        return None
    if _loaded:
        return Path(next(iter(_loaded)))
    sidecar = tvm.base._LOADED_LIBS.get("tvm_runtime_opencl")  # the wheel's own sidecar search hit
    return Path(sidecar._name if sidecar is not None else tvm.base._LOADED_LIBS["tvm_runtime"]._name)


def _ensure_built(log) -> Path:
    """The cached sidecar for these sources, wheel and compiler; built under a lock if missing."""
    _require_toolchain()
    paths = _wheel_paths()
    library = cache_dir() / _cache_key(paths) / LIB_NAME
    if library.is_file():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    with open(library.parent / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent callers build once; the others wait and reuse it
        if not library.is_file():
            _build(library, paths, log)
    return library


def _require_toolchain() -> None:
    """Fail early, in one line, naming the Debian packages to install."""
    missing = missing_packages()
    if missing:
        raise UserError(f"TVM's OpenCL runtime needs {', '.join(missing)}: apt-get install {' '.join(missing)} "
                        "(bash scripts/tvu.sh installs them)")


def _wheel_paths() -> dict[str, Path]:
    """Where the installed tvm and tvm_ffi keep the headers and libraries the sidecar must match."""
    import tvm
    import tvm_ffi

    tvm_dir = Path(tvm.__file__).resolve().parent
    ffi_dir = Path(tvm_ffi.__file__).resolve().parent
    paths = {"tvm_include": tvm_dir / "include", "tvm_src_runtime": tvm_dir / "src" / "runtime",
             "tvm_lib": Path(tvm.base._LOADED_LIBS["tvm_runtime"]._name).resolve().parent,
             "ffi_include": ffi_dir / "include", "ffi_lib": ffi_dir / "lib"}
    missing = [str(p) for p in paths.values() if not p.is_dir()]
    if missing or not SOURCE_DIR.is_dir():
        raise UserError(f"cannot build the OpenCL runtime: missing {', '.join(missing) or SOURCE_DIR} "
                        "(needs the apache-tvm wheel and a source checkout of tvm-unify)")
    return paths


def _cache_key(paths: dict[str, Path]) -> str:
    """A hash of everything the library depends on: sources, wheel versions and paths, compiler, flags."""
    digest = hashlib.sha256()
    for source in sorted(p for p in SOURCE_DIR.rglob("*") if p.is_file()):
        digest.update(str(source.relative_to(SOURCE_DIR)).encode() + b"\0" + source.read_bytes())
    compiler = subprocess.run(["g++", "--version"], capture_output=True, text=True).stdout
    parts = [version("apache-tvm"), version("apache-tvm-ffi"), compiler, *CXXFLAGS,
             *(str(p) for p in paths.values())]
    digest.update("\0".join(parts).encode())
    return digest.hexdigest()[:16]


def _build(library: Path, paths: dict[str, Path], log) -> None:
    """Compile the sources in parallel and link them, in a scratch tree laid out like TVM's."""
    log(f"[opencl] building TVM's OpenCL runtime into {library.parent} (once: about 10 s on two idle cores)")
    with tempfile.TemporaryDirectory(dir=library.parent) as scratch:
        tree = Path(scratch)
        shutil.copytree(SOURCE_DIR / "src", tree / "src")
        shutil.copytree(SOURCE_DIR / "include", tree / "include")
        # The sources include "../../../runtime/*.h": point that at the wheel's own copies.
        (tree / "src" / "runtime").symlink_to(paths["tvm_src_runtime"], target_is_directory=True)
        includes = [f"-I{tree / 'include'}", f"-I{paths['tvm_include']}", f"-I{paths['ffi_include']}"]
        objects = _compile_all(tree, includes)
        partial = tree / LIB_NAME
        _check(subprocess.run(
            ["g++", "-shared", "-o", str(partial), *map(str, objects), f"-L{paths['tvm_lib']}",
             f"-L{paths['ffi_lib']}", "-ltvm_runtime", "-ltvm_ffi", "-lOpenCL", "-Wl,--no-undefined",
             f"-Wl,-rpath,{paths['tvm_lib']}:{paths['ffi_lib']}"], capture_output=True, text=True), "linking")
        partial.rename(library)  # atomic: a half-written library is never visible under its final name


def _compile_all(tree: Path, includes: list[str]) -> list[Path]:
    """Compile every source at once (two files, so both cores are busy); check them once all finished."""
    jobs = {}
    for source in SOURCES:
        obj = tree / (Path(source).stem + ".o")
        cmd = ["g++", *CXXFLAGS, f"-ffile-prefix-map={tree}/=", *includes, "-c", str(tree / source),
               "-o", str(obj)]
        jobs[obj] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outputs = {obj: job.communicate()[0] for obj, job in jobs.items()}
    for obj, job in jobs.items():
        done = subprocess.CompletedProcess(job.args, job.returncode, outputs[obj], "")
        _check(done, f"compiling {obj.stem}.cc")
    return list(jobs)


def _check(proc: subprocess.CompletedProcess, what: str) -> None:
    """Raise a one-line UserError quoting the compiler's first error line."""
    if proc.returncode == 0:
        return
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    first = next((line for line in lines if "error" in line), lines[-1] if lines else "(no output)")
    raise UserError(f"building TVM's OpenCL runtime failed while {what}: {first.strip()}")
