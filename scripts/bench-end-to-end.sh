#!/usr/bin/env bash
# The end-to-end comparison of issue 13 (results/benchmarks.md): the whole process of
# `mcgrad run --loss squared --estimators reinforce --samples 1024 --reps 50000 --backend cpu`
# (start-up, the sweep, summary files and plots) against scripts/numpy_reinforce.py, the
# vectorised numpy implementation of the same variance estimate (whole process too: interpreter
# and numpy import included), best of 3 each, alternating. PYTHON: a python with numpy
# (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
cargo build --release --quiet
bin=target/release/mcgrad
out=$(mktemp -d /tmp/mcgrad-e2e.XXXXXX)
trap 'rm -rf "$out"' EXIT
best_mcgrad=1e9; best_numpy=1e9
for i in 1 2 3; do
  t0=$(date +%s.%N)
  "$bin" run --loss squared --estimators reinforce --samples 1024 --reps 50000 --backend cpu \
    --quiet --out "$out/mcgrad" >/dev/null
  t1=$(date +%s.%N)
  "$python" scripts/numpy_reinforce.py results/reference/problem.json "$out/numpy" 1024 50000 >/dev/null
  t2=$(date +%s.%N)
  best_mcgrad=$(python3 -c "print(min($best_mcgrad, $t1 - $t0))")
  best_numpy=$(python3 -c "print(min($best_numpy, $t2 - $t1))")
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores"
python3 -c "
m, n = $best_mcgrad, $best_numpy
print(f'mcgrad run (whole process, best of 3): {m:.3f} s')
print(f'numpy (whole process, best of 3):      {n:.3f} s')
print(f'ratio mcgrad / numpy: {m / n:.3f} (target: at most 0.1)')"
