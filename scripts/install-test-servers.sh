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
# One change to the published source: TCP_NODELAY on accepted connections. Without it, a GET
# of an object of more than a few KiB on a reused connection waits about 40 ms (Nagle's
# algorithm holds the body until the headers are acknowledged, and the client delays that
# acknowledgement), which made every stage of the cluster's ridge sweep about 40 ms. Real
# S3 servers (and Go's, like MinIO) set it. Bump the patch name to rebuild.
S3S_FS_PATCH="nodelay-1"

install_s3s_fs() {
  local bin="$BATON_TOOLS/bin/s3s-fs" stamp="$BATON_TOOLS/s3s-fs.stamp"
  local want="$S3S_FS_VERSION $S3S_FS_PATCH"
  if [ -x "$bin" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    say "s3s-fs: already installed at $bin ($want)"
    return 0
  fi
  say "s3s-fs: building $want into $BATON_TOOLS (a few minutes, once)"
  local work
  work="$(mktemp -d)"
  # The published crate, fetched through a throwaway package and unpacked.
  mkdir -p "$work/fetch/src"
  : > "$work/fetch/src/lib.rs"
  cat > "$work/fetch/Cargo.toml" <<TOML
[package]
name = "fetch-s3s-fs"
version = "0.0.0"
edition = "2021"

[dependencies]
s3s-fs = { version = "=$S3S_FS_VERSION", default-features = false }
TOML
  (cd "$work/fetch" && cargo fetch -q)
  local crate
  crate="$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"s3s-fs-$S3S_FS_VERSION.crate" | head -1)"
  tar -xzf "$crate" -C "$work"
  local main="$work/s3s-fs-$S3S_FS_VERSION/src/main.rs"
  sed -i 's|^\( *\)let conn = http_server.serve_connection(TokioIo::new(socket)|\1let _ = socket.set_nodelay(true);\n&|' "$main"
  grep -q 'socket.set_nodelay(true)' "$main" || {
    say "s3s-fs: the source changed; cannot apply the TCP_NODELAY patch"
    return 1
  }
  cargo install --locked --force --path "$work/s3s-fs-$S3S_FS_VERSION" --features binary \
    --root "$BATON_TOOLS"
  echo "$want" > "$stamp"
  rm -rf "$work"
}

# ---------------------------------------------------------------------------------------
# Debian packages run by the tests as plain processes on free ports: etcd (etcd-server,
# 3.4.x, /usr/bin/etcd; testkit/src/etcd.rs) and Prometheus (prometheus, 2.42,
# /usr/bin/prometheus; testkit/src/prometheus.rs). Installed from apt (root, or sudo
# otherwise); the packages' own services must not run (etcd would hold port 2379).

# install_deb PACKAGE COMMAND SERVICE
install_deb() {
  local package="$1" command="$2" service="$3"
  if command -v "$command" >/dev/null 2>&1; then
    say "$package: already installed"
    return 0
  fi
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  say "$package: installing Debian's $package"
  # Keep the package's postinst from starting its service (Docker images usually ship
  # such a policy already; add one just for the install if there is none).
  local policy=/usr/sbin/policy-rc.d added_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    added_policy=1
  fi
  $sudo apt-get update -q
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "$package"
  if [ "$added_policy" -eq 1 ]; then $sudo rm -f "$policy"; fi
  # Should it have started anyway (a systemd host), stop and disable it.
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $sudo systemctl disable --now "$service" >/dev/null 2>&1 || true
  elif [ -x "/etc/init.d/$service" ]; then
    $sudo "/etc/init.d/$service" stop >/dev/null 2>&1 || true
  fi
  say "$package: installed"
}

# ---------------------------------------------------------------------------------------
# Python gRPC tools: a venv at $BATON_TOOLS/py with grpcio, grpcio-tools, grpcio-reflection
# and grpcio-health-checking from PyPI, for the Python client example (examples/python) and
# its test (testkit/tests/single_node/python_client.rs), which generates the stubs with
# `$BATON_TOOLS/py/bin/python -m grpc_tools.protoc`, and for examples/python/grpc_probe.py
# (`grpcurl list` and a health probe, by reflection; grpcurl is not packaged in Debian).
GRPCIO_VERSION="1.85.1"

install_python_grpc() {
  local venv="$BATON_TOOLS/py"
  if "$venv/bin/python" -c "import grpc, grpc_tools, google.protobuf, grpc_reflection, grpc_health" >/dev/null 2>&1; then
    say "python grpc: already installed in $venv"
    return 0
  fi
  if ! python3 -c "import venv, ensurepip" >/dev/null 2>&1; then
    say "python grpc: python3 with venv and ensurepip is needed (Debian: python3-venv)"
    return 1
  fi
  say "python grpc: creating $venv with grpcio, grpcio-tools, grpcio-reflection and grpcio-health-checking $GRPCIO_VERSION"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "grpcio==$GRPCIO_VERSION" "grpcio-tools==$GRPCIO_VERSION" \
    "grpcio-reflection==$GRPCIO_VERSION" "grpcio-health-checking==$GRPCIO_VERSION"
  say "python grpc: $("$venv/bin/python" -c 'import grpc; print("grpcio", grpc.__version__)')"
}

# ---------------------------------------------------------------------------------------
# A browser for the web UI's test (testkit/tests/single_node/browser.rs): Debian's chromium,
# headless, driven through WebDriver by chromium-driver (/usr/bin/chromedriver).

# ---------------------------------------------------------------------------------------

main() {
  install_deb etcd-server etcd etcd
  say "etcd: $(etcd --version | head -n 1)"
  install_deb prometheus prometheus prometheus
  say "prometheus: $(prometheus --version 2>&1 | head -n 1)"
  install_deb chromium-driver chromedriver chromium-driver
  say "chromium: $(chromium --version 2>/dev/null | head -n 1)"
  install_s3s_fs
  install_python_grpc
}

main "$@"
