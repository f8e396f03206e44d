#!/usr/bin/env bash
# Installs the real servers that baton's integration tests run against, once, into a cache
# folder that outlives the work tree: BATON_TOOLS (default: $HOME/.cache/baton-tools).
# Each server has a section of its own below; a server already installed is skipped.
# Usage: scripts/install-test-servers.sh
set -euo pipefail

BATON_TOOLS="${BATON_TOOLS:-$HOME/.cache/baton-tools}"
export BATON_TOOLS
mkdir -p "$BATON_TOOLS/bin"

say() { printf '==> %s\n' "$*" >&2; }

# ---------------------------------------------------------------------------------------
# S3: s3s-fs, an S3-compatible server that keeps objects in a local folder.
# 0.14.1 is the newest release whose rust-version (1.92) this toolchain meets; 0.15 and
# later need rustc 1.96. testkit/src/s3.rs runs it as `$BATON_TOOLS/bin/s3s-fs`.
S3S_FS_VERSION="0.14.1"

install_s3s_fs() {
  local bin="$BATON_TOOLS/bin/s3s-fs"
  if [ -x "$bin" ]; then
    say "s3s-fs: already installed at $bin"
    return 0
  fi
  say "s3s-fs: building $S3S_FS_VERSION into $BATON_TOOLS (a few minutes, once)"
  cargo install --locked s3s-fs --version "$S3S_FS_VERSION" --features binary \
    --root "$BATON_TOOLS"
}

# ---------------------------------------------------------------------------------------

main() {
  install_s3s_fs
}

main "$@"
