#!/usr/bin/env bash
# Runs every test of baton: formatting, lints, unit and integration tests on real
# processes, and the benchmark in its short mode (so it cannot rot; it asserts no speed).
# Installs what the tests need first. Usage: scripts/test.sh
set -euo pipefail
export CARGO_TERM_COLOR=never
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

# What the tests need: the Rust toolchain here; etcd and an S3 server are installed by
# scripts/install-test-servers.sh below.
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is required: install Rust from your distribution or rustup" >&2
  exit 1
fi
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy
fi

log "test servers"
scripts/install-test-servers.sh

log "format"
cargo fmt --all -- --check

log "lints"
cargo clippy --workspace --all-targets -- -D warnings

log "build"
cargo build --workspace --bins

log "tests"
results=$(mktemp)
trap 'rm -f "$results"' EXIT
cargo test --workspace 2>&1 | tee "$results"

log "benchmark (short mode)"
./target/debug/baton-bench --quick

log "benchmark (short mode, cluster: 3 replicas, 3-member etcd, results in S3, failover)"
./target/debug/baton-bench --cluster --quick

# One closing line for the whole suite (cargo prints one per test binary).
read -r passed failed < <(awk '/^test result:/ {
  for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i }
} END { print p + 0, f + 0 }' "$results")
echo
echo "tests: ${passed} passed, ${failed} failed"
