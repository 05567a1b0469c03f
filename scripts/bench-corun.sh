#!/usr/bin/env bash
# How much of two CPUs a CPU bench gets on this machine: runs one criterion bench binary's
# benches (one filter) one thread alone pinned to CPU 0, then two single-thread copies at
# once (CPUs 0 and 1), then with every CPU (the bench's normal run), ROUNDS times each
# (default 2), and prints one markdown row per bench with the medians (M elements/s, one per
# round; the two copies as "a + b"). On two CPUs that are two whole cores, each copy runs as
# fast as one alone and the normal run about twice as fast; where the copies slow each other
# down (shared core, shared caches, a host's clock), the sum of the two copies is what two
# threads can reach at best.
#   scripts/bench-corun.sh FILTER BENCH_BINARY
# e.g. scripts/bench-corun.sh 'cpu_sweep/score-function/S=16/' target/release/deps/cpu-...
# (`cargo bench --bench cpu --no-run` prints the binary). Needs taskset (util-linux) and at
# least two CPUs; run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$#" -ne 2 ]; then
    echo "usage: scripts/bench-corun.sh FILTER BENCH_BINARY" >&2
    exit 2
fi
filter=$1
binary=$2
if [ ! -x "$binary" ]; then
    echo "not an executable bench binary: $binary" >&2
    exit 2
fi
if ! command -v taskset >/dev/null; then
    echo "taskset not found (package util-linux)" >&2
    exit 2
fi
if [ "$(nproc)" -lt 2 ]; then
    echo "needs at least two CPUs, this machine has $(nproc)" >&2
    exit 2
fi
rounds=${ROUNDS:-2}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# bench NAME PREFIX...: the bench binary under the command PREFIX (env, taskset), its output
# in $out/NAME.txt and its criterion files in a directory of its own (two at once share none).
bench() {
    local name=$1
    shift
    CRITERION_HOME="$out/criterion.$name" "$@" "$binary" --bench --warm-up-time 1 \
        --measurement-time 3 "$filter" >"$out/$name.txt" 2>&1
}
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$rounds"); do
    bench "alone.$round" env RAYON_NUM_THREADS=1 taskset -c 0
    bench "first.$round" env RAYON_NUM_THREADS=1 taskset -c 0 &
    first=$!
    bench "second.$round" env RAYON_NUM_THREADS=1 taskset -c 1
    wait "$first"
    bench "all.$round" env
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$out" "$rounds" <<'PY'
import sys
sys.dont_write_bytecode = True  # no scripts/__pycache__ in the checkout
sys.path.insert(0, "scripts")
from criterion_medians import medians
out, rounds = sys.argv[1], int(sys.argv[2])
runs = {kind: [medians(f"{out}/{kind}.{r}.txt") for r in range(1, rounds + 1)]
        for kind in ("alone", "first", "second", "all")}
names = sorted({n for rs in runs.values() for r in rs for n in r})
print("| bench | one thread alone | two one-thread copies at once | all CPUs |")
print("|---|---|---|---|")
for n in names:
    get = lambda kind, r: runs[kind][r].get(n, float("nan"))
    alone = " / ".join(f"{get('alone', r):.1f}" for r in range(rounds))
    both = " / ".join(f"{get('first', r):.1f} + {get('second', r):.1f}" for r in range(rounds))
    every = " / ".join(f"{get('all', r):.1f}" for r in range(rounds))
    print(f"| `{n}` | {alone} | {both} | {every} |")
PY
