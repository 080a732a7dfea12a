#!/usr/bin/env bash
# tvm-unify bootstrap: installs what the project needs (idempotently), then runs a task.
#   bash scripts/tvu.sh demo        the main job on the built-in default model
#   bash scripts/tvu.sh test        the default (fast) test suite
#   bash scripts/tvu.sh test-slow   the slow end-to-end tests
#   bash scripts/tvu.sh ARGS...     any other `tvm-unify` command, e.g. `bash scripts/tvu.sh targets`
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
APT_PACKAGES=(gcc-aarch64-linux-gnu g++-aarch64-linux-gnu file
    qemu-user debootstrap fakeroot gcc g++ opencl-headers ocl-icd-opencl-dev pocl-opencl-icd)  # aarch64 device, OpenCL

install_apt() {
    local missing=()
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "[setup] apt-get install ${missing[*]}" >&2
    $sudo apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

install_python() {
    local stamp="$VENV/.tvu-installed" want
    want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
    [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && return
    echo "[setup] creating $VENV and installing Python packages (first run takes a few minutes)" >&2
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    # torch first, pinned, so nothing later pulls a CUDA build.
    "$VENV/bin/pip" install -q torch==2.13.0
    # bench: the peer runtimes the slow peer test compares with; opencl-fp16: an OpenCL device with fp16 here
    "$VENV/bin/pip" install -q -e ".[test,bench,opencl-fp16]"
    echo "$want" > "$stamp"
}

install_apt
install_python
export PATH="$VENV/bin:$PATH"

[ $# -eq 0 ] && set -- demo
case "$1" in
    test) shift; exec python -m pytest -q --durations=15 "$@" ;;
    test-slow) shift; exec python -m pytest -q -m slow --durations=15 "$@" ;;
    *) exec tvm-unify "$@" ;;
esac
