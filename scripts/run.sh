#!/usr/bin/env bash
# Installs what is needed, builds, and runs the engine on its embedded defaults:
# RocksDB in ./data, configs/demo.toml (a round goes live every minute), http://127.0.0.1:8080.
# The demo's two delivery partners run beside it as `redrain partner-sim` (the wallet on
# 127.0.0.1:9100, coffee coupons on 127.0.0.1:9101; logs and summaries in target/demo/), and stop
# with it. The demo operators (configs/operators.toml, public passwords) can log in to the admin
# page. Extra arguments go to `redrain serve` (see `redrain serve --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --bin redrain
mkdir -p target/demo
bin=./target/release/redrain
"$bin" partner-sim --listen 127.0.0.1:9100 --latency-ms 1..5 >target/demo/wallet.txt 2>&1 &
wallet=$!
"$bin" partner-sim --listen 127.0.0.1:9101 --latency-ms 5..40 >target/demo/coffee.txt 2>&1 &
coffee=$!
trap 'kill -TERM $wallet $coffee 2>/dev/null; wait $wallet $coffee 2>/dev/null' EXIT
# The demo operators, unless the arguments name another file.
operators=(--operators configs/operators.toml)
for arg in "$@"; do
  if [[ $arg == --operators* ]]; then operators=(); fi
done
"$bin" serve "${operators[@]}" "$@"
