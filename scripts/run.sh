#!/usr/bin/env bash
# Installs what is needed, builds, and runs the engine on its embedded defaults:
# RocksDB in ./data, configs/demo.toml (a round goes live every minute), http://127.0.0.1:8080.
# Extra arguments go to `redrain serve` (see `redrain serve --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --bin redrain
exec ./target/release/redrain serve "$@"
