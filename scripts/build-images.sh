#!/usr/bin/env bash
# Builds baton's images from this work tree: baton-scheduler, baton-worker, baton-etcd,
# baton-s3 and baton-runtime, their common base (tag: BATON_TAG, default `local`), from
# docker/Dockerfile.
#
# The binaries come from a cargo build (BATON_PROFILE: `release`, the default, or `dev`,
# which the test suite uses since it has built them already). The base image is
# BATON_BASE_IMAGE when set, else `debian:bookworm-slim` when Docker has it or can pull it,
# else one built here from Debian's packages (debootstrap, then `docker import`), kept in
# BATON_TOOLS and in Docker for later runs: this works on a machine that reaches no image
# registry. Images already built from the same inputs are reused (Docker's build cache).
# Usage: scripts/build-images.sh
set -euo pipefail
cd "$(dirname "$0")/.."

BATON_TOOLS="${BATON_TOOLS:-$HOME/.cache/baton-tools}"
TAG="${BATON_TAG:-local}"
PROFILE="${BATON_PROFILE:-release}"
LOCAL_BASE="baton-base:bookworm"
say() { printf '==> %s\n' "$*" >&2; }

# ---------------------------------------------------------------------------------------
# The base image.
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

local_base() {
  if have_image "$LOCAL_BASE"; then
    echo "$LOCAL_BASE"
    return
  fi
  local rootfs="$BATON_TOOLS/rootfs/bookworm"
  if [ ! -x "$rootfs/bin/sh" ]; then
    if ! command -v debootstrap >/dev/null 2>&1; then
      say "installing debootstrap (Debian's package)"
      if [ "$(id -u)" -eq 0 ]; then apt-get install -y debootstrap >&2; else sudo apt-get install -y debootstrap >&2; fi
    fi
    say "base image: debootstrap of Debian bookworm into $rootfs (about a minute, once)"
    rm -rf "$rootfs.partial"
    mkdir -p "$(dirname "$rootfs")"
    debootstrap --variant=minbase bookworm "$rootfs.partial" http://deb.debian.org/debian >&2
    # As debian:bookworm-slim: no package cache, documentation or manuals.
    rm -rf "$rootfs.partial"/var/cache/apt/archives/*.deb "$rootfs.partial"/var/lib/apt/lists/* \
      "$rootfs.partial"/usr/share/doc "$rootfs.partial"/usr/share/man "$rootfs.partial"/usr/share/info
    mv "$rootfs.partial" "$rootfs"
  fi
  say "base image: importing $rootfs as $LOCAL_BASE"
  tar -C "$rootfs" -c . | docker import \
    --change 'CMD ["bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    - "$LOCAL_BASE" >/dev/null
  echo "$LOCAL_BASE"
}

base_image() {
  if [ -n "${BATON_BASE_IMAGE:-}" ]; then
    echo "$BATON_BASE_IMAGE"
  elif have_image debian:bookworm-slim || timeout 20 docker pull -q debian:bookworm-slim >/dev/null 2>&1; then
    echo debian:bookworm-slim
  else
    local_base
  fi
}

# ---------------------------------------------------------------------------------------
# The build context: the binaries (without debug info) and the scripts the images run.
context="target/docker-context"
if [ "$PROFILE" = release ]; then
  say "cargo build --release (scheduler, worker, CLI)"
  cargo build --release -p baton-scheduler -p baton-worker -p baton-cli --bins
  bin_dir="${CARGO_TARGET_DIR:-target}/release"
else
  bin_dir="${CARGO_TARGET_DIR:-target}/debug"
fi
s3s_fs="$BATON_TOOLS/bin/s3s-fs"
if [ ! -x "$s3s_fs" ]; then
  scripts/install-test-servers.sh
fi
mkdir -p "$context/bin"
for b in baton-scheduler baton-worker baton; do
  # Copied only when changed, so that Docker's cache holds across runs.
  objcopy --strip-debug "$bin_dir/$b" "$context/bin/$b.new"
  if cmp -s "$context/bin/$b.new" "$context/bin/$b"; then rm "$context/bin/$b.new"; else mv "$context/bin/$b.new" "$context/bin/$b"; fi
done
cp -p "$s3s_fs" "$context/bin/s3s-fs"
cp -p docker/setup.sh docker/s3-entrypoint.sh docker/prometheus.yml "$context/"

base=$(base_image)
version=$(git describe --always --dirty 2>/dev/null || echo dev)
# `runtime` is the Debian base every image starts from (a shell, CA certificates, tini): the
# container-task tests run their commands in it.
for target in runtime etcd s3 prometheus scheduler worker; do
  say "image baton-$target:$TAG (base $base)"
  docker build -q -f docker/Dockerfile --target "$target" \
    --build-arg "BASE=$base" --build-arg "VERSION=$version" \
    -t "baton-$target:$TAG" "$context" >/dev/null
done
# The docker example's image (examples/docker): Python with the ridge training code.
say "image baton-ridge:$TAG (base $base)"
docker build -q --build-arg "BASE=$base" -t "baton-ridge:$TAG" examples/docker >/dev/null
say "images built: baton-{scheduler,worker,etcd,s3,prometheus,runtime,ridge}:$TAG"
