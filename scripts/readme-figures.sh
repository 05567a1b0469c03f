#!/usr/bin/env bash
# Regenerates the README's training figures from the committed code, on the CPU engine (training
# is bit-identical for any thread count and any estimator list): the reference curves
# results/train (seed 0, the defaults of `mcgrad train`), the runs of seeds 1-4
# (results/train-seeds/seed-N.json, each run's curves.json), and the README's training table,
# rendered from those five runs by examples/training_table.rs between its markers.
# tests/cpu/readme_figures.rs checks the table against the committed runs and reruns one cell.
# About 2 minutes on 2 cores after the release build.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=target/release/mcgrad
"$bin" train --backend cpu --quiet --seed 0 --out results/train >/dev/null
mkdir -p results/train-seeds
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for seed in 1 2 3 4; do
  "$bin" train --backend cpu --quiet --seed "$seed" --out "$tmp/seed-$seed" >/dev/null
  cp "$tmp/seed-$seed/curves.json" "results/train-seeds/seed-$seed.json"
done
cargo run --release --quiet --example training_table -- --write README.md
echo "regenerated results/train, results/train-seeds and the README's training table"
