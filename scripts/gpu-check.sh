#!/usr/bin/env bash
# The device check of a GPU host, in one command: builds baton with `cuda` (unless BATON_BIN
# names a folder holding a `baton` built so), starts an embedded cluster whose trainer worker
# has the host's GPUs, and checks that
#   1. the ridge sweep trained and scored on a GPU gives the CPU run's R² (relative 1e-9);
#   2. two one-GPU tasks on a one-GPU worker (with free slots) never overlap, and each sees
#      exactly that GPU in CUDA_VISIBLE_DEVICES;
# then prints the ridge_benchmark task's times on the CPU and on the GPU (1,000,000 × 256), and
# PyTorch's on the same shape when PyTorch with CUDA is installed. Exits non-zero on any failure.
#
# Usage: scripts/gpu-check.sh        (BATON_BIN=DIR to use prebuilt binaries;
#                                     BATON_BENCH_N / BATON_BENCH_FEATURES for another shape)
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
fail() { echo "gpu-check: FAILED: $*" >&2; exit 1; }
step() { printf '\n==> %s\n' "$*"; }

command -v nvidia-smi >/dev/null || fail "no nvidia-smi: this is not a GPU host with a driver"
command -v python3 >/dev/null || fail "python3 is needed to read the runs' JSON"
step "GPUs"
nvidia-smi --query-gpu=index,name,memory.total,driver_version,compute_cap --format=csv

if [ -n "${BATON_BIN:-}" ]; then
  bin="$(cd "${BATON_BIN}" && pwd)"
else
  step "building baton with cuda"
  bin="$(cd "$(scripts/build-cuda.sh)" && pwd)"
fi
baton="${bin}/baton"
[ -x "${baton}" ] || fail "${baton} is not there"
LD_LIBRARY_PATH="$(scripts/cuda-env.sh)"
export LD_LIBRARY_PATH
if ldd "${baton}" | grep "not found"; then
  fail "the CUDA libraries above are not found (see scripts/cuda-env.sh)"
fi

work="$(mktemp -d)"
port=$((17000 + RANDOM % 2000))
addr="http://127.0.0.1:${port}"
step "an embedded cluster at ${addr}: worker 'local' (no GPU), worker 'local,trainer' (the GPUs)"
"${baton}" dev --listen "127.0.0.1:${port}" --data "${work}/dev" \
  --worker local:4:none --worker local,trainer:4:auto >"${work}/dev.log" 2>&1 &
dev=$!
trap 'kill ${dev} 2>/dev/null; wait ${dev} 2>/dev/null; rm -rf "${work}"' EXIT
for _ in $(seq 1 100); do
  "${baton}" --scheduler "${addr}" workers >"${work}/workers" 2>/dev/null \
    && grep -q trainer "${work}/workers" && break
  sleep 0.2
done
cat "${work}/workers"
grep -q "GPU-" "${work}/workers" || fail "the trainer worker offers no GPU (see ${work}/dev.log)"

run() { "${baton}" --scheduler "${addr}" run --no-cache --json "$@"; }

step "1. the ridge sweep on the CPU and on the GPU"
run examples/ridge_sweep.yaml >"${work}/cpu.json"
run examples/ridge_sweep_gpu.yaml >"${work}/gpu.json"
gpu_run="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "${work}/gpu.json")"
"${baton}" --scheduler "${addr}" logs "${gpu_run}" >"${work}/gpu.logs"
python3 - "${work}/cpu.json" "${work}/gpu.json" "${work}/gpu.logs" <<'EOF'
import json, sys
cpu, gpu = (json.load(open(p)) for p in sys.argv[1:3])
logs = open(sys.argv[3]).read()
for run in (cpu, gpu):
    if run["state"] != "COMPLETED":
        sys.exit(f"run {run['id']} of {run['flow']} ended {run['state']}: {run['error']}")
def scores(run):
    return {t["value"]["alpha"]: t["value"]["r2"] for t in run["task_runs"] if t["task"] == "evaluate"}
c, g = scores(cpu), scores(gpu)
if not c or sorted(c) != sorted(g):
    sys.exit(f"the runs scored different alphas: {sorted(c)} vs {sorted(g)}")
worst = 0.0
for alpha in sorted(c):
    diff = abs(c[alpha] - g[alpha]) / max(abs(c[alpha]), 1e-300)
    worst = max(worst, diff)
    print(f"alpha {alpha:<8g} R² cpu {c[alpha]!r:<22} gpu {g[alpha]!r:<22} relative difference {diff:.1e}")
if worst > 1e-9:
    sys.exit(f"R² differs by {worst:.1e} (tolerance 1e-9)")
on_gpu = logs.count("device=cuda:")
if on_gpu < 2 * len(c):
    sys.exit(f"only {on_gpu} task runs say they computed on a GPU:\n{logs}")
print(f"ok: the GPU run matches the CPU run (worst relative difference {worst:.1e}); "
      f"{len(c)} fits and {len(c)} scores ran on the GPU")
EOF

step "2. two one-GPU tasks on a one-GPU worker with free slots"
cat >"${work}/exclusive.yaml" <<'EOF'
name: gpu_exclusive
labels: [trainer]
tasks:
  - name: hold
    process:
      command: sh
      args: ["-c", "s=$(date +%s%N); sleep 1; e=$(date +%s%N); echo \"{\\\"start\\\": $s, \\\"end\\\": $e, \\\"cuda\\\": \\\"$CUDA_VISIBLE_DEVICES\\\", \\\"gpus\\\": \\\"$BATON_GPUS\\\"}\""]
    inputs: {i: [1, 2]}
    map: [i]
    resources: {gpus: 1}
EOF
ngpus="$(nvidia-smi --query-gpu=index --format=csv,noheader | wc -l)"
if [ "${ngpus}" -ne 1 ]; then
  echo "this host has ${ngpus} GPUs: the trainer worker gets only GPU 0 for this part"
  kill "${dev}"; wait "${dev}" 2>/dev/null || true
  "${baton}" dev --listen "127.0.0.1:${port}" --data "${work}/dev2" \
    --worker local,trainer:4:0 >"${work}/dev2.log" 2>&1 &
  dev=$!
  sleep 3
fi
run "${work}/exclusive.yaml" >"${work}/exclusive.json"
uuid="$(nvidia-smi --query-gpu=uuid --format=csv,noheader | head -1 | tr -d ' ')"
python3 - "${work}/exclusive.json" "${uuid}" <<'EOF'
import json, sys
run = json.load(open(sys.argv[1]))
if run["state"] != "COMPLETED":
    sys.exit(f"the run ended {run['state']}: {run['error']}")
spans = sorted((t["value"]["start"], t["value"]["end"], t["value"]["cuda"], t["value"]["gpus"])
               for t in run["task_runs"])
for s, e, cuda, gpus in spans:
    print(f"task run from {s} to {e} ns: CUDA_VISIBLE_DEVICES={cuda} BATON_GPUS={gpus}")
    if cuda != sys.argv[2]:
        sys.exit(f"CUDA_VISIBLE_DEVICES is {cuda!r}, not the GPU's UUID {sys.argv[2]!r}")
(s1, e1, *_), (s2, e2, *_) = spans
if s2 < e1:
    sys.exit(f"the two attempts overlapped by {(e1 - s2) / 1e6:.1f} ms")
print(f"ok: they never overlapped (the second started {(s2 - e1) / 1e6:.1f} ms after the first ended)")
EOF

step "3. ridge_benchmark: a ridge fit on generated data, CPU and GPU"
n="${BATON_BENCH_N:-1000000}"
k="${BATON_BENCH_FEATURES:-256}"
cat >"${work}/bench.yaml" <<EOF
name: gpu_benchmark
labels: [trainer]
tasks:
  - name: cpu
    builtin: ridge_benchmark
    inputs: {n: ${n}, features: ${k}, device: cpu}
  - name: gpu
    builtin: ridge_benchmark
    inputs: {n: ${n}, features: ${k}, round: [1, 2, 3]}
    map: [round]
    resources: {gpus: 1}
    after: [cpu]
  - name: gpu_f32
    builtin: ridge_benchmark
    inputs: {n: ${n}, features: ${k}, dtype: f32}
    resources: {gpus: 1}
    after: [gpu]
EOF
run "${work}/bench.yaml" >"${work}/bench.json"
python3 - "${work}/bench.json" <<'EOF'
import json, sys
run = json.load(open(sys.argv[1]))
if run["state"] != "COMPLETED":
    sys.exit(f"the run ended {run['state']}: {run['error']}")
for t in sorted(run["task_runs"], key=lambda t: (t["started_us"], t["map_index"])):
    v = t["value"]
    name = t["task"] + (f"[{t['map_index']}]" if t["map_index"] >= 0 else "")
    print(f"{name:<10} {v['device']:<7} {v['dtype']} {v['n']}×{v['features']}: generate {v['generate_s']:.3f} s, "
          f"fit {v['fit_s']:.3f} s, max weight error {v['max_weight_error']:.1e}")
    if v["max_weight_error"] > 1e-2:
        sys.exit(f"{name}: the fit is off")
    if t["task"].startswith("gpu") and not v["device"].startswith("cuda"):
        sys.exit(f"{name} ran on {v['device']}, not on a GPU")
EOF
if python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
  python3 - "${n}" "${k}" <<'EOF'
import sys, time, torch
n, k = int(sys.argv[1]), int(sys.argv[2])
for dtype in (torch.float64, torch.float32):
    times = []
    for _ in range(3):
        torch.cuda.synchronize(); t0 = time.perf_counter()
        x = torch.randn(n, k, dtype=dtype, device="cuda")
        w = torch.randn(k, 1, dtype=dtype, device="cuda")
        y = x @ w + 0.1 * torch.randn(n, 1, dtype=dtype, device="cuda") + 3
        data = torch.cat([x, y], 1).double()
        torch.cuda.synchronize(); t1 = time.perf_counter()
        c = data - data.mean(0, keepdim=True)
        xc, yc = c[:, :k], c[:, k:]
        a = xc.T @ xc + torch.eye(k, dtype=torch.float64, device="cuda")
        coef = torch.linalg.solve(a, xc.T @ yc).cpu()
        torch.cuda.synchronize(); t2 = time.perf_counter()
        times.append((t1 - t0, t2 - t1))
    print(f"pytorch    {str(dtype).split('.')[1]} {n}×{k}: " +
          ", ".join(f"generate {g:.3f} s, fit {f:.3f} s" for g, f in times))
EOF
else
  echo "(PyTorch with CUDA is not installed here: no PyTorch comparison)"
fi
step "gpu-check: all checks passed"
