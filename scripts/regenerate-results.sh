#!/usr/bin/env bash
# Regenerates the committed runs under results/ from the committed code, on the CPU engine
# (bit-identical for any thread count): the default single-variable run (results/reference),
# the multi-variable reference run on indecater-6x10 (results/indecater-6x10), the
# regression check's baseline (results/baseline.json, from `mcgrad check`'s default
# configuration) and the published experiments of `mcgrad reproduce --all`
# (results/papers/NAME). scripts/readme-figures.sh regenerates the training runs and the
# README's table. About 15 minutes on 2 cores after the release build (reproduce --all is
# most of it); REPRODUCE=0 skips the experiments.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=target/release/mcgrad
"$bin" run --backend cpu --quiet --out results/reference >/dev/null
# S up to 256: gumbel-rao and arsm evaluate the loss many times per draw on 6 x 10 categories.
"$bin" run --backend cpu --quiet --problem indecater-6x10 --samples 1,2,4,8,16,32,64,128,256 \
  --out results/indecater-6x10 >/dev/null
# Issue 10's comparison at equal cost: every estimator's variance and MSE at 64 and 256 loss
# evaluations per estimate, from that run.
python3 scripts/equal-cost-table.py results/indecater-6x10/summary.json 64 256 \
  >results/indecater-6x10-equal-cost.md
# The baseline, of the default configuration: this CPU's instruction tier's speed figures
# are measured, the other tiers' kept from the file (each comes from the last machine of its
# tier that ran this).
"$bin" check --update --default-config --baseline results/baseline.json >/dev/null
echo "regenerated results/reference, results/indecater-6x10 (and its equal-cost table) and results/baseline.json"
if [ "${REPRODUCE:-1}" != 0 ]; then
  # The published experiments, one folder each under results/papers/ (mcgrad reproduce --list).
  "$bin" reproduce --all --quiet >/dev/null
  echo "regenerated results/papers/*"
fi
