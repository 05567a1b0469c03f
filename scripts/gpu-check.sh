#!/usr/bin/env bash
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig;
# Issue 14's device check, as one prepared call on a machine with an NVIDIA GPU and its driver
# but no Rust toolchain or registry. It runs the binaries scripts/build-device-bundle.sh put in
# .device/bin/ with the Vulkan loader packages in .gl/ (unpacked above):
#   1. the GPU tests (tests/gpu.rs, tests/gpu_generic.rs, tests/train_gpu.rs), a missing
#      adapter failing them (MCGRAD_REQUIRE_GPU=1);
#   2. the criterion GPU benches (benches/gpu.rs): the score-function pass at S = 4096 and
#      256, the Gumbel pass at S = 64 and 1024, the generic path on vae-decoder at S = 64 with
#      the decoder loss's share of the FP32 peak (MCGRAD_FP32_PEAK, FLOP/s), each with its
#      kernels' device times from timestamp queries, the counts kernel's workgroup sweep and
#      the moments kernels' two reductions (gpu_moments_reduction: tree against subgroup)
#      Philox's two multiplies (gpu_philox_multiply: 16-bit limbs against int64) and the
#      relaxed draws kernel's two loop forms (gpu_relaxed_draws: runtime against unrolled)
#      and two chunk sizes (gpu_chunk_reps: 2^16 against 2^18 repetitions), which decide the
#      defaults of MCGRAD_MOMENTS_REDUCTION, MCGRAD_PHILOX_MULTIPLY, MCGRAD_RELAXED_DRAWS and
#      MCGRAD_GPU_CHUNK_REPS (README, "The GPU engine"); then the forward layer's bench;
#   3. the default `mcgrad run --backend gpu`, and `mcgrad train` on the CPU and the GPU (the
#      whole step on the GPU, then the round-trip path, MCGRAD_TRAIN_ROUND_TRIP=1).
# Everything goes under $OUT (at most 8 files): machine.txt, tests.txt, bench.txt (criterion's
# raw output), criterion.tar.gz (criterion's estimates.json files), bench-before.txt (an
# earlier build's benches, where one was carried), run.txt, run-summary.csv, train.txt. Copy them into results/gpu/ (as h100-*.txt, ...) and the figures into
# results/benchmarks.md. Steps run in order of importance within a budget of
# MCGRAD_CHECK_BUDGET seconds (default 540, under the device's 600 s per command): a step that
# would not fit is skipped and says so. Exits non-zero if a test or bench fails.
set -uo pipefail
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
cd "$(dirname "$0")/.." || exit 1
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
budget=${MCGRAD_CHECK_BUDGET:-540}

# The NVIDIA Vulkan driver: use the loader's default places, else the container's.
if ! ls /usr/share/vulkan/icd.d/*nvidia* /etc/vulkan/icd.d/*nvidia* >/dev/null 2>&1; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
{
    echo "VK_DRIVER_FILES=${VK_DRIVER_FILES:-}"
    nvidia-smi -L 2>&1 || true
    nvidia-smi --query-gpu=name,clocks.max.sm,clocks.sm,power.limit --format=csv 2>&1 || true
    ls -l .device/bin 2>&1
} | tee "$OUT/machine.txt"

status=0
# run_step FILE LIMIT_SECONDS COMMAND...: runs COMMAND with a timeout of LIMIT (less if the
# budget is shorter), appending its output to $OUT/FILE; skips it when under 20 s are left.
run_step() {
    local file=$1 limit=$2
    shift 2
    local left=$((budget - SECONDS))
    if [ "$left" -lt 20 ]; then
        echo "skipped (budget spent): $*" | tee -a "$OUT/$file"
        return 0
    fi
    [ "$limit" -le "$left" ] || limit=$left
    echo "== $* (limit ${limit} s)" | tee -a "$OUT/$file"
    timeout "$limit" "$@" 2>&1 | tee -a "$OUT/$file"
    local rc=${PIPESTATUS[0]}
    echo "exit status: $rc" | tee -a "$OUT/$file"
    return "$rc"
}

export MCGRAD_REQUIRE_GPU=1
run_step tests.txt 120 .device/bin/gpu-tests --test-threads=1 || status=1
run_step tests.txt 120 .device/bin/gpu-generic-tests --test-threads=1 || status=1

export CRITERION_HOME=/tmp/criterion
# MCGRAD_BENCH_FILTER (a criterion filter, e.g. 'gpu_sweep|gpu_moments_reduction') runs
# only those benches, where the budget is short.
run_step bench.txt 300 .device/bin/gpu-bench --bench --warm-up-time 1 --measurement-time 3 --noplot ${MCGRAD_BENCH_FILTER:+"$MCGRAD_BENCH_FILTER"} || status=1
(cd /tmp && tar czf "$OUT/criterion.tar.gz" --exclude='*.svg' criterion 2>/dev/null) || true

# The same benches from an earlier build where one was carried (.device/bin/gpu-bench-before,
# named in the closing note), on this very machine, to compare with.
if [ -x .device/bin/gpu-bench-before ]; then
    run_step bench-before.txt 90 .device/bin/gpu-bench-before --bench --warm-up-time 1 --measurement-time 3 --noplot 'gpu_sweep/|gpu_generic/' || true
fi

run_step tests.txt 90 .device/bin/train-gpu-tests --test-threads=1 || status=1
run_step bench.txt 60 .device/bin/forward-bench --bench --warm-up-time 1 --measurement-time 2 --noplot || true

.device/bin/mcgrad info 2>&1 | tee -a "$OUT/run.txt"
export TIMEFORMAT="wall %R s"
run_step run.txt 90 bash -c 'time .device/bin/mcgrad run --backend gpu --out /tmp/mcgrad-gpu-run --quiet' || status=1
cp /tmp/mcgrad-gpu-run/summary.csv "$OUT/run-summary.csv" 2>/dev/null || true
for backend in cpu gpu; do
    run_step train.txt 90 bash -c "time .device/bin/mcgrad train --backend $backend --quiet --out /tmp/train-$backend" || true
done
# The GPU's earlier training path (a round trip per step), to compare with the whole step.
run_step train.txt 60 bash -c "time MCGRAD_TRAIN_ROUND_TRIP=1 .device/bin/mcgrad train --backend gpu --quiet --out /tmp/train-gpu-round-trip" || true
echo "total wall ${SECONDS} s" | tee -a "$OUT/machine.txt"
exit "$status"
