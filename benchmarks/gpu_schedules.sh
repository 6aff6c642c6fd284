#!/usr/bin/env bash
# The schedules' device checks in one run, from the source tree, offline (benchmarks/RESULTS.md).
#
#   OUT=/some/dir DATA=/path/to/fashion-mnist bash benchmarks/gpu_schedules.sh
#
# 1. Wall time of every schedule on real separate devices: the machine's CPU cores as 2 CPU
#    devices (one per segment), Fashion-MNIST, 3 epochs per loop, no recovery.
# 2. samples/s of conventional, the PNN segments and both model-parallel baselines on those 2 CPU
#    devices (bench paper; the compiled model-parallel needs a device per segment).
# 3. jit + NamedSharding against jax.pmap for a segment group of 2 CPU devices.
# 4. The default compare (10 epochs) on the GPU, every segment on gpu:0, and bench paper and
#    wide-8192 there (one GPU: no compiled model-parallel, which needs a device per segment).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_schedules_out}"
DATA="${DATA:-/usr/share/datasets/fashion-mnist}"
RUNS="${RUNS:-/tmp/gpu_schedules_runs}"
mkdir -p "$OUT" "$RUNS"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
mkdir -p /usr/share/datasets && { [ -e /usr/share/datasets/fashion-mnist ] || cp -r "$DATA" /usr/share/datasets/fashion-mnist; }
{ nvidia-smi || true; nproc; python3 -c "import jax; print(jax.__version__, jax.devices())"; } > "$OUT/machine.txt" 2>&1
CPU2=(env JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=2)
step() { echo "== $(date +%T) $*"; }
step "1 compare on 2 CPU devices"
timeout 150 "${CPU2[@]}" python3 -m synthpart compare --dataset fashion-mnist --epochs 3 \
  --recovery-epochs 0 --with-model-parallel --quiet --out "$RUNS/cpu2" 2>&1 | tail -15
cp "$RUNS/cpu2/results.json" "$OUT/compare_cpu2dev.json"
step "2 bench paper on 2 CPU devices"
timeout 90 "${CPU2[@]}" python3 -m synthpart bench paper --no-memory-report --repeats 2 \
  --out "$RUNS/bench_cpu2" 2>&1 | tail -12
cp "$RUNS/bench_cpu2/bench.json" "$OUT/bench_paper_cpu2dev.json"
step "3 pmap against sharding, group of 2 CPU devices"
timeout 110 env JAX_PLATFORMS=cpu python3 benchmarks/pmap_vs_sharding.py --examples 20000 \
  --epochs 4 --rounds 2 2>&1 | tail -12
step "4 compare on the GPU"
timeout 130 python3 -m synthpart compare --dataset fashion-mnist --quiet --out "$RUNS/gpu" 2>&1 | tail -15
cp "$RUNS/gpu/results.json" "$OUT/compare_gpu.json"
step "5 bench paper and wide-8192 on the GPU"
for suite in paper wide-8192; do
  timeout 75 python3 -m synthpart bench $suite --no-memory-report --repeats 2 \
    --loops conventional,sequential,parallel,model-parallel-stepwise --out "$RUNS/bench_gpu_$suite" 2>&1 | tail -10
  cp "$RUNS/bench_gpu_$suite/bench.json" "$OUT/bench_${suite}_gpu.json"
done
step done
