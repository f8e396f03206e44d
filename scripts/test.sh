#!/usr/bin/env bash
# Runs every test of baton: formatting, lints, unit and integration tests on real
# processes, and the benchmark in its short mode (so it cannot rot; it asserts no speed).
# Installs what the tests need first. Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

# What the tests need. Single-node tests need only the Rust toolchain; the cluster tests
# (etcd, S3) will extend this list.
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is required: install Rust from your distribution or rustup" >&2
  exit 1
fi
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy
fi

log "format"
cargo fmt --all -- --check

log "lints"
cargo clippy --workspace --all-targets -- -D warnings

log "build"
cargo build --workspace --bins

log "tests"
cargo test --workspace

log "benchmark (short mode)"
./target/debug/baton-bench --quick
