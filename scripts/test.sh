#!/usr/bin/env bash
# Installs what is needed and runs the whole test suite: unit, property, integration and crash
# tests, doc tests, and each criterion bench once in test mode. Everything builds in the
# release profile, so RocksDB's C++ is compiled once for tests, benches and the binary.
set -euo pipefail
cd "$(dirname "$0")/.."
# chromium + chromium-driver: the admin page's end-to-end tests drive headless Chromium.
./scripts/setup.sh chromium chromium-driver
cargo test --release --workspace --all-targets
cargo test --release --workspace --doc
