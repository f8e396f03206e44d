#!/usr/bin/env bash
# Builds baton with NVIDIA GPU support (the `cuda` feature: candle on CUDA for the built-in
# training) in release mode: the `baton` command (its embedded workers) and `baton-worker`.
# nvcc, the headers and the libraries come from scripts/cuda-toolkit.sh (NVIDIA's wheels on
# PyPI) unless a system toolkit is found (nvcc on PATH, or CUDA_HOME).
#
# Usage: scripts/build-cuda.sh [cargo args...]
#   CUDA_COMPUTE_CAP=90   the GPU generation to build kernels for (default: nvidia-smi's)
#   BATON_CUDA_TOOLKIT=DIR use this toolkit root instead (holding bin/nvcc, include, lib64)
# Prints the folder of the binaries. To run them, the CUDA libraries (cuBLAS, cuRAND, NVRTC)
# must be found at run time: scripts/cuda-env.sh prints an LD_LIBRARY_PATH that does it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${BATON_CUDA_TOOLKIT:-}" ]; then
  root="${BATON_CUDA_TOOLKIT}"
elif [ -n "${CUDA_HOME:-}" ] && [ -x "${CUDA_HOME}/bin/nvcc" ]; then
  root="${CUDA_HOME}"
elif command -v nvcc >/dev/null 2>&1; then
  root="$(dirname "$(dirname "$(command -v nvcc)")")"
else
  root="$(scripts/cuda-toolkit.sh)"
fi
if [ -z "${CUDA_COMPUTE_CAP:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    CUDA_COMPUTE_CAP="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '.')"
  else
    echo "no nvidia-smi here: set CUDA_COMPUTE_CAP to the GPU's compute capability (90 for H100/H200)" >&2
    exit 2
  fi
fi
export CUDA_COMPUTE_CAP CUDA_HOME="${root}" CUDA_ROOT="${root}" NVCC="${root}/bin/nvcc"
export PATH="${root}/bin:${PATH}"
export LIBRARY_PATH="${root}/lib64${LIBRARY_PATH:+:${LIBRARY_PATH}}"
echo "building with CUDA from ${root} for compute capability ${CUDA_COMPUTE_CAP}" >&2
cargo build --release -p baton-cli -p baton-worker --features baton-cli/cuda,baton-worker/cuda "$@" >&2
echo "${CARGO_TARGET_DIR:-target}/release"
