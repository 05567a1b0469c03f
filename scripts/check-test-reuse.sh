#!/usr/bin/env bash
# Checks the promise of the README's quick start: after `cargo build --release` (or `cargo
# run --release`), `cargo test --release` reuses the release build of the library and
# compiles only the test programs. A dev-dependency that switches on a feature of a crate the
# library shares (serde, bitflags, ...) makes cargo build a second library for the tests; this
# fails then, naming it. Prints the test programs compiled (the CPU-side integration tests
# are one program, tests/cpu/). Run after a release build, as .ci/run does.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
cargo test --release --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
lib_fresh, rebuilt, programs = [], [], []
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact":
        continue
    t, name = m["target"], m["target"]["name"]
    if m["profile"]["test"]:
        programs.append(name)
    elif "lib" in t["kind"] and name == "mcgrad":
        lib_fresh.append(m["fresh"])
    elif not m["fresh"] and "custom-build" not in t["kind"]:
        rebuilt.append(name)
if not lib_fresh or not all(lib_fresh):
    sys.exit("cargo test --release compiled the mcgrad library again after the release build"
             " (a dev-dependency changed its features?); also rebuilt: " + ", ".join(sorted(set(rebuilt))))
print("the release build of the library is reused; test programs: %d (%s)" % (len(programs), ", ".join(sorted(programs))))
'
