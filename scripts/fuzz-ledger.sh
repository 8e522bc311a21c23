#!/usr/bin/env bash
# Fuzzes the ledger decoder with libFuzzer on the stable toolchain (the coverage flags that
# `cargo fuzz` passes; no sanitizer, which needs nightly). New inputs are added to
# fuzz/corpus/decode, which the test suite replays. Usage: scripts/fuzz-ledger.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-60}
target=x86_64-unknown-linux-gnu
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/redrain-fuzz-target}
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks" \
  cargo build --release --target "$target" --bin decode
"$CARGO_TARGET_DIR/$target/release/decode" corpus/decode -max_total_time="$seconds" -max_len=4096
