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

log "cuda feature"
# The worker's `cuda` feature (candle on CUDA) builds only with a CUDA toolkit; the rest of
# the suite is CPU-only. scripts/build-cuda.sh fetches a toolkit from PyPI for a real build,
# and scripts/gpu-check.sh is the check to run on a GPU host.
if command -v nvcc >/dev/null 2>&1 || [ -x "${CUDA_HOME:-/nonexistent}/bin/nvcc" ]; then
  CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}" cargo check -p baton-worker --features cuda
else
  echo "skipped: no CUDA toolkit here (no nvcc on PATH, no CUDA_HOME), so the \`cuda\` feature"
  echo "is not compiled; scripts/build-cuda.sh builds it with CUDA from NVIDIA's PyPI wheels"
fi

log "build"
# One build of everything the tests run, with the features the tests need: the test targets,
# and the binaries that testkit's integration tests start (baton-scheduler, baton-worker,
# baton: bins of other packages, which `cargo test` does not build for testkit's tests) and
# the benchmark. In one invocation, the binaries get the same dependency features as the
# tests (dev-dependencies add some, e.g. tokio's test-util), so `cargo test` below builds
# nothing again; a separate `cargo build --bins` would compile most dependencies twice.
cargo build --workspace --bins --tests

log "images"
# The docker-compose cluster's images, from the binaries just built (the compose tests run
# them); reused across runs (Docker's build cache, and a base image kept once built).
BATON_PROFILE=dev scripts/build-images.sh

log "tests"
results=$(mktemp)
trap 'rm -f "$results"' EXIT
# --no-fail-fast: the integration tests are a few large binaries (testkit/tests/*/main.rs);
# a failure in one must not keep the others from running.
status=0
cargo test --workspace --no-fail-fast 2>&1 | tee "$results" || status=$?

# One closing line for the whole suite (cargo prints one per test binary).
summary() {
  read -r passed failed < <(awk '/^test result:/ {
    for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i }
  } END { print p + 0, f + 0 }' "$results")
  echo
  echo "tests: ${passed} passed, ${failed} failed"
}
if [ "$status" -ne 0 ]; then
  summary
  exit "$status"
fi

bin="${CARGO_TARGET_DIR:-target}/debug"

log "benchmark (short mode)"
"$bin/baton-bench" --quick --memory

log "benchmark (short mode, cluster: 3 replicas, 3-member etcd, results in S3, failover)"
"$bin/baton-bench" --cluster --quick

summary
