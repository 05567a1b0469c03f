#!/usr/bin/env bash
# Times what a fresh clone's second command, `cargo test --release`, compiles after the first,
# `cargo run --release` (issue 12 item 16; the README's quick start quotes the figure). In this
# checkout's target/ it builds the release binary, then makes cargo forget the test programs,
# the examples and the dev-only crates (their fingerprints only; the release build of the
# library stays), and times `cargo test --release --no-run`. Run it on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
fp=target/release/.fingerprint
for d in "$fp"/mcgrad-*; do
  if ls "$d" | grep -qE '^(test-|example-)'; then rm -rf "$d"; fi
done
# The crates only the library package's dev-dependencies bring (cargo tree with and without dev
# edges; the benches package is not part of the second command).
normal=$(cargo tree -p mcgrad -e normal,build --prefix none -f '{p}' | awk '{print $1}' | sort -u)
all=$(cargo tree -p mcgrad -e normal,build,dev --prefix none -f '{p}' | awk '{print $1}' | sort -u)
for c in $(comm -13 <(echo "$normal") <(echo "$all")); do rm -rf "$fp/$c"-*; done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores"
/usr/bin/time -f "second command's compile: wall %e s, user %U s, sys %S s" \
  cargo test --release --no-run ${TIMINGS:+--timings} 2>&1 | grep -E "second command"
