#!/usr/bin/env bash
# Dense vs unified builds of built-in models: host latency (local) and exact aarch64 instruction counts
# on the emulated device (qemu), each build checked against the host dense build of the same weights.
# Emulated wall time is NOT ARM speed: compare the instruction counts there.
#   bash benchmarks/device/run.sh [model ...]      (default: digits-cnn mlp; writes into this folder)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
MODELS=("$@")
[ $# -eq 0 ] && MODELS=(digits-cnn mlp)
WORK="$(mktemp -d)"
PORT="$(python -c 'from tvm_unify.procs import free_port; print(free_port())')"
cleanup() { tvm-unify device stop --port "$PORT" >/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

host_libs=() arm_libs=()
for m in "${MODELS[@]}"; do
    tvm-unify unify "$m" --one-shot -o "$WORK/$m.pt" >/dev/null
    for kind in dense unified; do
        flag=(); [ "$kind" = dense ] && flag=(--dense)
        tvm-unify compile "$WORK/$m.pt" "${flag[@]}" -o "$WORK/$m-$kind-host.so" >/dev/null
        tvm-unify compile "$WORK/$m.pt" "${flag[@]}" --target arm -o "$WORK/$m-$kind-arm.so" >/dev/null
    done
    python - "$m" "$WORK/$m-x.npy" <<'PY'
import sys, numpy as np
from tvm_unify.models import get_builtin
shape = get_builtin(sys.argv[1]).input_shape
np.save(sys.argv[2], np.random.default_rng(0).standard_normal(shape).astype("float32"))
PY
    tvm-unify run "$WORK/$m-dense-host.so" --input "$WORK/$m-x.npy" -o "$WORK/$m-ref.npy" >/dev/null
done

tvm-unify device start --port "$PORT"
for m in "${MODELS[@]}"; do
    tvm-unify bench "$WORK/$m-dense-host.so" "$WORK/$m-unified-host.so" --local --repeat 20 \
        --input "$WORK/$m-x.npy" --reference "$WORK/$m-ref.npy" \
        --json "$HERE/$m-host.json" --markdown "$HERE/$m-host.md" --title "$m: dense vs unified on this host"
    tvm-unify bench "$WORK/$m-dense-arm.so" "$WORK/$m-unified-arm.so" --rpc "127.0.0.1:$PORT" --count \
        --repeat 5 --input "$WORK/$m-x.npy" --reference "$WORK/$m-ref.npy" \
        --json "$HERE/$m-emulated.json" --markdown "$HERE/$m-emulated.md" \
        --title "$m: dense vs unified on the emulated aarch64 device (qemu)"
done
