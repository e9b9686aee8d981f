#!/usr/bin/env bash
# Run every cargo-fuzz target (fuzz/fuzz_targets/) for a bounded time,
# coverage-guided by libFuzzer. CI runs this before the test suite; a crash
# fails the run and leaves its input under fuzz/artifacts/TARGET/ (add it to
# the regression tests).
#
#   scripts/fuzz-ci.sh              every target, FUZZ_SECONDS each
#   FUZZ_SECONDS=300 scripts/fuzz-ci.sh procfile host
#
# No sanitizer (`-s none`): the targets are safe Rust, where AddressSanitizer
# finds little, and instrumenting every dependency with it made the build
# take about 45 minutes here. Coverage guidance and debug assertions stay on.
# RUSTC_BOOTSTRAP=1 lets the stable toolchain take the -Z flags cargo-fuzz
# passes. Installs cargo-fuzz from crates.io when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS=${FUZZ_SECONDS:-30}
CARGO_FUZZ_VERSION=0.13.2
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install --quiet --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

cd fuzz
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi
start=$(date +%s)
cargo fuzz build -s none --release
echo "fuzz build: $(($(date +%s) - start)) s"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    # -timeout: one input taking over 10 s is a hang, reported as a crash.
    if ! cargo fuzz run -s none --release "$t" "corpus/$t" -- \
        -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        echo "fuzz target $t failed:" >&2
        tail -n 40 "$log" >&2
        ls -l "artifacts/$t" 2>/dev/null >&2 || true
        exit 1
    fi
    runs=$(awk '/^stat::number_of_executed_units/ { print $NF }' "$log")
    echo "fuzz target $t: ${runs:-?} inputs in ${FUZZ_SECONDS} s, no failure"
done
echo "fuzzing: ${#targets[@]} targets, ${FUZZ_SECONDS} s each, no failing input ($(($(date +%s) - start)) s in all)"
