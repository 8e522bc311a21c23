#!/usr/bin/env bash
# Installs the system packages redrain needs, idempotently (Debian, as root or with sudo), and
# any extra packages named as arguments (benchmark scripts add their own tools).
# clang + libclang-dev: bindgen for the rocksdb crate's bindings. g++ (and with it gcc): the C++
# of RocksDB and the C of mimalloc, the allocator.
set -euo pipefail

packages=(clang libclang-dev g++ "$@")

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo not found; install the Rust toolchain (rustup) first" >&2; exit 1; }
