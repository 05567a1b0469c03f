#!/usr/bin/env bash
# Regenerates the committed runs under results/ from the committed code, on the CPU engine
# (bit-identical for any thread count): the default single-variable run (results/reference),
# the multi-variable reference run on indecater-6x10 (results/indecater-6x10), and the
# published experiments of `mcgrad reproduce --all` (results/papers/NAME).
# A few minutes on 2 cores after the release build.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=target/release/mcgrad
"$bin" run --backend cpu --quiet --out results/reference >/dev/null
# S up to 256: gumbel-rao and arsm evaluate the loss many times per draw on 6 x 10 categories.
"$bin" run --backend cpu --quiet --problem indecater-6x10 --samples 1,2,4,8,16,32,64,128,256 \
  --out results/indecater-6x10 >/dev/null
# The published experiments, one folder each under results/papers/ (mcgrad reproduce --list).
"$bin" reproduce --all --quiet >/dev/null
echo "regenerated results/reference, results/indecater-6x10 and results/papers/*"
