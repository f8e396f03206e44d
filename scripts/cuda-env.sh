#!/usr/bin/env bash
# Prints an LD_LIBRARY_PATH under which a baton built with `cuda` finds the libraries it
# loads: the CUDA 13 runtime, cuBLAS, cuBLASLt and cuRAND (linked), and the driver's
# libcuda.so.1 and libnvidia-ml.so.1 (NVML, for GPU discovery). A library the loader already
# finds is left alone; for each other one, the first folder holding it is added, searched in
# the driver's folders, CUDA_HOME, /usr/local/cuda, NVIDIA's Python wheels (nvidia/cu13/lib),
# scripts/cuda-toolkit.sh's folder (never its link-time stub of libcuda), then anywhere under
# /usr/local, /opt and /usr/lib.
# Usage: export LD_LIBRARY_PATH="$(scripts/cuda-env.sh)"
set -euo pipefail
needed=(libcuda.so.1 libnvidia-ml.so.1 libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10)
path="${LD_LIBRARY_PATH:-}"
found() {
  local lib="$1" d
  IFS=: read -r -a dirs <<<"${path}"
  for d in "${dirs[@]}"; do
    [ -n "$d" ] && [ -e "$d/${lib}" ] && return 0
  done
  ldconfig -p 2>/dev/null | grep -q " ${lib} "
}
candidates=(/usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib/wsl/lib)
for d in "${CUDA_HOME:-}" /usr/local/cuda; do
  [ -n "$d" ] && candidates+=("$d/lib64" "$d/lib" "$d/targets/x86_64-linux/lib")
done
for py in python3 /opt/torch/.venv/bin/python3; do
  if command -v "$py" >/dev/null 2>&1; then
    while IFS= read -r site; do
      candidates+=("${site}/nvidia/cu13/lib")
      for sub in "${site}"/nvidia/*/lib; do candidates+=("$sub"); done
    done < <("$py" -c 'import site; print("\n".join(site.getsitepackages()))' 2>/dev/null || true)
  fi
done
candidates+=("${HOME}/.cache/baton-cuda/13.0/cuda/lib")
for lib in "${needed[@]}"; do
  found "${lib}" && continue
  hit=""
  for d in "${candidates[@]}"; do
    if [ -e "$d/${lib}" ]; then hit="$d"; break; fi
  done
  if [ -z "${hit}" ]; then
    hit="$(find /usr/local /opt /usr/lib -maxdepth 8 -name "${lib}" 2>/dev/null | head -1 || true)"
    hit="${hit%/*}"
  fi
  if [ -n "${hit}" ]; then
    path="${path:+${path}:}${hit}"
  else
    echo "cuda-env: ${lib} not found" >&2
  fi
done
echo "${path}"
