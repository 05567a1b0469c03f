#!/usr/bin/env bash
# Builds what scripts/gpu-check.sh needs on a GPU machine that has a driver but no Rust
# toolchain and no package registry: the release GPU test and bench binaries, copied to
# .device/bin/ under stable names (gpu-tests, gpu-generic-tests, train-gpu-tests, gpu-bench,
# forward-bench, mcgrad), and the Debian Vulkan/GL loader
# packages in .gl/. Run it here (x86-64, the registry reachable) from anywhere in the repo.
set -euo pipefail
cd "$(dirname "$0")/.."

# The path of the executable of target `name` of kind `kind` in cargo's JSON messages.
executable() {
    python3 -c '
import json, sys
name, kind = sys.argv[1], sys.argv[2]
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    t = m.get("target") or {}
    if m.get("reason") == "compiler-artifact" and t.get("name") == name and kind in t.get("kind", []) and m.get("executable"):
        print(m["executable"])
' "$1" "$2" | tail -n 1
}

mkdir -p .device/bin
tests=$(cargo test --release --test gpu --no-run --message-format=json | executable gpu test)
generic_tests=$(cargo test --release --test gpu_generic --no-run --message-format=json | executable gpu_generic test)
bench=$(cargo bench --bench gpu --no-run --message-format=json | executable gpu bench)
train_tests=$(cargo test --release --test train_gpu --no-run --message-format=json | executable train_gpu test)
forward=$(cargo bench --bench forward --no-run --message-format=json | executable forward bench)
strip -o .device/bin/train-gpu-tests "$train_tests"
strip -o .device/bin/forward-bench "$forward"
cargo build --release --bin mcgrad
strip -o .device/bin/mcgrad target/release/mcgrad
if [ -z "$tests" ] || [ -z "$generic_tests" ] || [ -z "$bench" ]; then
    echo "could not find the built binaries (tests: '$tests', generic tests: '$generic_tests', bench: '$bench')" >&2
    exit 1
fi
# Without debug info: the device machine takes at most 64 MiB of carried files.
strip -o .device/bin/gpu-tests "$tests"
strip -o .device/bin/gpu-generic-tests "$generic_tests"
strip -o .device/bin/gpu-bench "$bench"
echo "binaries: $(ls -l .device/bin | tail -n +2 | awk '{print $NF, $5}' | tr '\n' ' ')"

# The Vulkan loader and GL/EGL dispatch libraries, as Debian packages (amd64).
exclude=$(git rev-parse --git-path info/exclude)  # a worktree's .git is a file
mkdir -p "$(dirname "$exclude")"
grep -qx '/.gl/' "$exclude" 2>/dev/null || echo /.gl/ >>"$exclude"
mkdir -p .gl /tmp/amd64/partial
o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
# shellcheck disable=SC2086
apt-get $o update
# shellcheck disable=SC2086
(cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
ls .gl
