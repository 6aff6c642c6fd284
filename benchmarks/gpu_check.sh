#!/usr/bin/env bash
# Every GPU check in one run, from the source tree, offline: see benchmarks/gpu_check.py.
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh           # H100/H200: < 5 minutes
#   OUT=/tmp/check bash benchmarks/gpu_check.sh --tiny   # the same logic at toy sizes, on CPU
#
# Needs jax (with CUDA), flax, optax, numpy; torch is optional (its loop is skipped without it).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
# Grow GPU memory on demand, so that the memory probes (child processes) find room and the
# device's peak counters mean what each process used.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
{ nvidia-smi || true; } > "$OUT/nvidia-smi.txt" 2>&1
python3 -c "import jax; print(jax.__version__, jax.devices())" | tee "$OUT/devices.txt"
timeout 295 python3 benchmarks/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/log.txt"
