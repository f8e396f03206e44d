#!/usr/bin/env bash
# Makes a CUDA 13.0 toolkit for building baton's `cuda` feature without a system toolkit: nvcc,
# the CUDA headers and the libraries the build links against, from NVIDIA's wheels on PyPI,
# unpacked into a local folder (nothing is installed system-wide; only python3 with pip is
# needed). A GPU host with only the NVIDIA driver can then build the worker with `cuda`.
#
# Usage: scripts/cuda-toolkit.sh [DIR]     (default: ~/.cache/baton-cuda/13.0)
# Prints the toolkit's root. scripts/build-cuda.sh calls it and sets the environment.
#
# CUDA 13.0 is chosen because kernels compiled to PTX by nvcc 13.N load only on a driver that
# supports CUDA 13.N or later: 13.0 loads on every CUDA 13 driver (580 and later). Set
# BATON_CUDA_VERSION=13.2 (say) for a newer driver.
#
# The driver's own library (libcuda.so) is not in any wheel: it comes with the driver. On a
# machine without a driver (a build machine), a link-time stub with the driver API's names
# is made, as the toolkit's own lib64/stubs/libcuda.so is: the binary then finds the real
# libcuda.so.1 of the GPU host's driver when it runs.
set -euo pipefail
version="${BATON_CUDA_VERSION:-13.0}"
dir="${1:-${HOME}/.cache/baton-cuda/${version}}"
root="${dir}/cuda"
if [ -x "${root}/bin/nvcc" ] && [ -e "${root}/lib64/libcuda.so" ] && [ -e "${root}/.complete" ]; then
  echo "${root}"
  exit 0
fi
command -v python3 >/dev/null || { echo "python3 with pip is needed to fetch the CUDA wheels" >&2; exit 1; }
mkdir -p "${dir}/wheels"
minor="${version#*.}"
next="${version%%.*}.$((minor + 1))"
# Each wheel at the newest patch release of this CUDA version (cuRAND numbers its own: 10.4.N
# goes with CUDA 13.N).
packages=(
  "nvidia-cuda-nvcc>=${version},<${next}"
  "nvidia-nvvm>=${version},<${next}"
  "nvidia-cuda-crt>=${version},<${next}"
  "nvidia-cuda-cccl>=${version},<${next}"
  "nvidia-cuda-runtime>=${version},<${next}"
  "nvidia-cuda-nvrtc>=${version},<${next}"
  "nvidia-cublas>=${version},<${next}"
  "nvidia-curand>=10.4.${minor},<10.4.$((minor + 1))"
)
echo "fetching CUDA ${version} wheels into ${dir}/wheels" >&2
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2010_x86_64 --platform manylinux_2_12_x86_64 \
  --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 \
  -d "${dir}/wheels" "${packages[@]}" >&2
rm -rf "${dir}/unpacked"
mkdir -p "${dir}/unpacked"
for w in "${dir}"/wheels/*.whl; do
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$w" "${dir}/unpacked"
done
rm -rf "${root}"
mv "${dir}/unpacked/nvidia/cu13" "${root}"
rm -rf "${dir}/unpacked"
chmod +x "${root}"/bin/* "${root}"/nvvm/bin/* 2>/dev/null || true
# The layout nvcc and the builds expect: lib64, and unversioned names for the linker.
[ -e "${root}/lib64" ] || ln -s lib "${root}/lib64"
for lib in "${root}"/lib/lib*.so.*; do
  base="${lib%%.so.*}.so"
  [ -e "${base}" ] || ln -s "$(basename "$lib")" "${base}"
done
# libcuda.so: the driver's where there is one, else a stub for linking.
driver="$(ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 / {print $NF; exit}')"
if [ -n "${driver}" ]; then
  ln -sf "${driver}" "${root}/lib/libcuda.so"
else
  echo "no NVIDIA driver here: making a link-time stub of libcuda.so" >&2
  names=$(grep -ohE '\bcu[A-Z][A-Za-z0-9_]*\b' "${root}/include/cuda.h" | sort -u)
  {
    for n in ${names}; do echo "void ${n}(void) {}"; done
  } >"${dir}/libcuda-stub.c"
  cc -shared -fPIC -w -Wl,-soname,libcuda.so.1 -o "${root}/lib/libcuda.so" "${dir}/libcuda-stub.c"
fi
touch "${root}/.complete"
echo "${root}"
