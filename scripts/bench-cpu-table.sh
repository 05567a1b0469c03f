#!/usr/bin/env bash
# The before/after table of the CPU engine's throughput (results/benchmarks.md), in one go:
# builds this checkout's `benches/cpu.rs` and that of a "before" commit (default: afe37c8, the
# commit before the CPU-engine work of the issue "CPU engine at the hardware's pace"; pass
# another as $1) in a temporary git worktree, then runs the two bench binaries alternately,
# ROUNDS times each (default 2), and prints one markdown row per bench with the median of the
# criterion medians of each. Run it on a quiet machine: it prints the load average too.
#   scripts/bench-cpu-table.sh [BEFORE_COMMIT] [FILTER]
# BEFORE_BIN=path: use that bench binary of the before commit instead of building one.
# FILTER: a criterion filter (default: every cpu_sweep and cpu_generic bench).
set -euo pipefail
cd "$(dirname "$0")/.."
before_commit=${1:-afe37c8}
filter=${2:-cpu_}
rounds=${ROUNDS:-2}
args=(--bench --warm-up-time 1 --measurement-time 3 "$filter")

bench_binary() { # dir -> path of the cpu bench binary built there
  (cd "$1" && cargo bench --bench cpu --no-run --message-format=json 2>/dev/null) |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "cpu" and m.get("executable"):
        print(m["executable"])' | tail -1
}

after=$(bench_binary .)
if [ -n "${BEFORE_BIN:-}" ]; then
  # A bench binary of the "before" commit built already.
  before=$BEFORE_BIN
else
  tree=$(mktemp -d /tmp/mcgrad-before.XXXXXX)
  git worktree add --quiet --detach "$tree" "$before_commit"
  trap 'git worktree remove --force "$tree"' EXIT
  # Reuse this checkout's built dependencies.
  [ -d target ] && cp -r target "$tree/target"
  before=$(bench_binary "$tree")
fi
[ -n "$after" ] && [ -n "$before" ] || { echo "could not build the bench binaries" >&2; exit 1; }

out=$(mktemp -d /tmp/mcgrad-bench.XXXXXX)
for round in $(seq "$rounds"); do
  for side in before after; do
    bin=$([ "$side" = before ] && echo "$before" || echo "$after")
    "$bin" "${args[@]}" 2>/dev/null >"$out/$side-$round.txt" || true
  done
done

echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
echo "before: $before_commit; after: $(git rev-parse --short HEAD); $rounds rounds, alternating"
python3 - "$out" "$rounds" <<'PY'
import re, statistics, sys
sys.dont_write_bytecode = True  # no scripts/__pycache__ in the checkout
sys.path.insert(0, "scripts")
from criterion_medians import medians
out, rounds = sys.argv[1], int(sys.argv[2])
runs = {s: [medians(f"{out}/{s}-{r}.txt") for r in range(1, rounds + 1)] for s in ("before", "after")}
names = sorted({n for r in runs["before"] + runs["after"] for n in r}, key=lambda n: (n.split("/")[1], int(re.search(r"S=(\d+)", n).group(1)) if "S=" in n else 0))
fmt = lambda v: f"{v:.1f} M/s" if v else "—"
print("| bench | before | after | ratio |")
print("|---|---|---|---|")
for n in names:
    b = [r[n] for r in runs["before"] if n in r]
    a = [r[n] for r in runs["after"] if n in r]
    mb, ma = (statistics.median(b) if b else 0), (statistics.median(a) if a else 0)
    print(f"| `{n}` | {fmt(mb)} | {fmt(ma)} | {ma / mb:.2f}x |" if mb and ma else f"| `{n}` | {fmt(mb)} | {fmt(ma)} | |")
PY
