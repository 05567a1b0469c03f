#!/usr/bin/env bash
# Runs criterion bench binaries alternately, ROUNDS times each (default 2), on one filter,
# and prints one markdown row per bench with each binary's medians (M elements/s, one per
# round; three significant digits below 1 M) in the order given: the before/after tables
# of results/benchmarks.md where more than two builds are compared in one sitting.
#   scripts/bench-alternate.sh FILTER LABEL=BENCH_BINARY [LABEL=BENCH_BINARY ...]
# e.g. scripts/bench-alternate.sh 'cpu_' before=/path/cpu-old after=target/release/deps/cpu-new
# (`cargo bench --bench cpu --no-run` prints a checkout's binary). Run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$#" -lt 2 ]; then
    echo "usage: scripts/bench-alternate.sh FILTER LABEL=BENCH_BINARY [LABEL=BENCH_BINARY ...]" >&2
    exit 2
fi
filter=$1
shift
rounds=${ROUNDS:-2}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
labels=()
for spec in "$@"; do
    label=${spec%%=*}
    binary=${spec#*=}
    if [ ! -x "$binary" ]; then
        echo "not an executable bench binary: $binary" >&2
        exit 2
    fi
    labels+=("$label")
done
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$rounds"); do
    for spec in "$@"; do
        "${spec#*=}" --bench --warm-up-time 1 --measurement-time 3 "$filter" >"$out/${spec%%=*}.$round.txt" 2>&1
    done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$out" "$rounds" "${labels[@]}" <<'PY'
import sys
sys.dont_write_bytecode = True  # no scripts/__pycache__ in the checkout
sys.path.insert(0, "scripts")
from criterion_medians import medians
out, rounds, labels = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
table = {}
for label in labels:
    for r in range(1, rounds + 1):
        for name, value in medians(f"{out}/{label}.{r}.txt").items():
            table.setdefault(name, {}).setdefault(label, []).append(value)
print("| bench | " + " | ".join(labels) + " |")
print("|---" * (len(labels) + 1) + "|")
for name in sorted(table):
    # One decimal from 1 M up, three significant digits below (a bench of k draws/s).
    fmt = lambda x: f"{x:.1f}" if x >= 1 else f"{x:.3g}"
    cells = [" / ".join(fmt(x) for x in table[name].get(l, [])) for l in labels]
    print(f"| `{name}` | " + " | ".join(cells) + " |")
PY
