#!/usr/bin/env bash
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig;
# Runs the GPU tests (MCGRAD_REQUIRE_GPU=1: a missing adapter fails) and the GPU benchmark
# on a machine with an NVIDIA GPU and its driver but no Rust toolchain or registry, from the
# binaries scripts/build-device-bundle.sh put in .device/bin/ and the Vulkan loader packages
# in .gl/ (unpacked above). Writes everything under $OUT (tests.txt, bench.txt, adapter
# details, the GPU run's summary), in well under 8 minutes; at most 8 files come back. Exits non-zero if the tests fail.
set -uo pipefail
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
cd "$(dirname "$0")/.." || exit 1
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}

# The NVIDIA Vulkan driver: use the loader's default places, else the container's.
if ! ls /usr/share/vulkan/icd.d/*nvidia* /etc/vulkan/icd.d/*nvidia* >/dev/null 2>&1; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
{
    echo "VK_DRIVER_FILES=${VK_DRIVER_FILES:-}"
    nvidia-smi -L 2>&1 || true
    ls -l .device/bin 2>&1
} | tee "$OUT/machine.txt"

status=0
echo "== GPU tests" | tee "$OUT/tests.txt"
MCGRAD_REQUIRE_GPU=1 timeout 240 .device/bin/gpu-tests --test-threads=1 2>&1 | tee -a "$OUT/tests.txt"
test_status=${PIPESTATUS[0]}
[ "$test_status" -eq 0 ] || status=$test_status
echo "tests exit status: $test_status" | tee -a "$OUT/tests.txt"
echo "== training on the GPU: tests" | tee -a "$OUT/tests.txt"
MCGRAD_REQUIRE_GPU=1 timeout 120 .device/bin/train-gpu-tests --test-threads=1 2>&1 | tee -a "$OUT/tests.txt"
train_test_status=${PIPESTATUS[0]}
echo "train tests exit status: $train_test_status" | tee -a "$OUT/tests.txt"
[ "$train_test_status" -eq 0 ] || status=$train_test_status

echo "== mcgrad info and the default run on the GPU" | tee "$OUT/run.txt"
.device/bin/mcgrad info 2>&1 | tee -a "$OUT/run.txt"
( TIMEFORMAT="wall %R s"; time timeout 120 .device/bin/mcgrad run --backend gpu --out /tmp/mcgrad-gpu-run --quiet ) 2>&1 | tee -a "$OUT/run.txt"
run_status=${PIPESTATUS[0]}
echo "run exit status: $run_status" | tee -a "$OUT/run.txt"
cp /tmp/mcgrad-gpu-run/summary.csv "$OUT/run-summary.csv" 2>/dev/null || true
[ "$run_status" -eq 0 ] || status=$run_status

echo "== mcgrad train, default settings, CPU engine then GPU forward pass" | tee "$OUT/train.txt"
for backend in cpu gpu; do
    ( TIMEFORMAT="train --backend $backend: wall %R s"; time timeout 150 .device/bin/mcgrad train --backend "$backend" --quiet --out "/tmp/train-$backend" ) 2>&1 | tail -n 15 | tee -a "$OUT/train.txt"
done
echo "== large batches (B = 2048, 300 steps, one learning rate)" | tee -a "$OUT/train.txt"
for backend in cpu gpu; do
    ( TIMEFORMAT="train --batch 2048 --backend $backend: wall %R s"; time timeout 120 .device/bin/mcgrad train --backend "$backend" --batch 2048 --steps 300 --lr 0.01 --estimators reinforce,muprop-c,gumbel-softmax --quiet --out "/tmp/train-big-$backend" ) 2>&1 | tail -n 8 | tee -a "$OUT/train.txt"
done

echo "== GPU bench" | tee "$OUT/bench.txt"
CRITERION_HOME=/tmp/criterion timeout 200 .device/bin/gpu-bench --bench \
    --warm-up-time 1 --measurement-time 3 --noplot 2>&1 | tee -a "$OUT/bench.txt"
bench_status=${PIPESTATUS[0]}
CRITERION_HOME=/tmp/criterion timeout 100 .device/bin/forward-bench --bench \
    --warm-up-time 1 --measurement-time 2 --noplot 2>&1 | tee -a "$OUT/bench.txt"
echo "bench exit status: $bench_status" | tee -a "$OUT/bench.txt"
grep -E "adapter|^gpu_|^forward_|thrpt" "$OUT/bench.txt" >"$OUT/summary.txt" || true
[ "$bench_status" -eq 0 ] || [ "$status" -ne 0 ] || status=$bench_status
exit "$status"
