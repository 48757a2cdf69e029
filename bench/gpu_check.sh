#!/usr/bin/env bash
# One-shot check for a machine with a GPU: benchmarks first, then the GPU tests, each
# step time-boxed, every table row flushed into $OUT as it is measured, so a run cut short
# keeps what it measured. Installs nothing, needs no network, no ../shared and no faiss;
# runs from a fresh copy of the repository with python3, torch (CUDA) and Triton.
#
#   OUT=/some/dir [GPU_N=8800000] bash bench/gpu_check.sh [--dry-run]
#
# --dry-run: the same steps on CPU tensors at small sizes (Triton interpreted), to check
# the script on a machine without a GPU; under 2.5 minutes on the 2-core CI machine.
#
# Time on an H200, estimated from compile and run times measured on the CI machine (2 Zen 4
# cores, shared; Triton compiles one kernel at a time in a process, so more cores do not
# help it). Measured here: a Triton kernel of this repository compiles to a cubin in
# 2.3 s (Triton 3.6) to 4.5 s (3.9) on average (74 shipped configurations, sm_80 + sm_90:
# 330 s of compilation); the CUDA extension's bindings.cpp takes 29 s of CPU with the torch
# headers and qnet_fused.cu 6 s for sm_90 (built in parallel by ninja).
#                                           cap   estimate
#   0 preflight, environment, nvidia-smi     -        5 s
#   1 bench/bench_gpu.py                   230 s    ~185 s: imports 5 s, CUDA build ~30 s,
#       ~14 Triton compilations (autotuning bounded to two tiles by
#       HYPENCODER_TRITON_AUTOTUNE=2) ~45 s, the 8.8M corpus ~3 s, timed runs ~45 s (a
#       62.6 TFLOP scan is 0.1-1.3 s per backend and call: 4 calls each, fewer when slow);
#       compressed storage (int8, fp8): ~6 more compilations ~25 s, its scans and gathers
#       ~30 s
#   2 bench.bench_graph --gpu              100 s    its own rows, flushed as measured
#   3 pytest on the GPU test files   the rest, >= 75 s  quick grid (HYPENCODER_KERNEL_GRID=quick),
#       ~60 specialisations at ~3 s, then the compressed-storage tests: partial, streamed
#       test by test (-v)
#   total of the caps                      405 s  <= 7 min
#
# $OUT receives at most 7 files: gpu_check.log (preflight, environment, step log),
# bench_gpu.md and bench_gpu.jsonl (tables, row by row), bench_gpu.txt, bench_graph.txt,
# graph_gpu.png, pytest.txt. Build and compile caches go to $HYP_CACHE (default under
# ${TMPDIR:-/tmp}), never into $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
for a in "$@"; do
  case "$a" in
    --dry-run) DRY=1 ;;
    *) echo "gpu_check: unknown argument $a (only --dry-run)" >&2; exit 2 ;;
  esac
done
PY="${PYTHON:-python3}"
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: > "$LOG"
start=$(date +%s)
log() { echo "[gpu_check $(( $(date +%s) - start ))s] $*" | tee -a "$LOG"; }

# 0. Preflight: what the CUDA extension and Triton's launcher need, said plainly.
missing=()
if ! command -v "$PY" > /dev/null; then
  log "FATAL: no $PY on PATH (set PYTHON=...)"; exit 2
fi
pyinc="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])' 2>/dev/null)"
[[ -f "$pyinc/Python.h" ]] || missing+=("Python.h (not in $pyinc; the python3-dev package): Triton's launcher and the CUDA extension compile against it")
command -v ninja > /dev/null || missing+=("ninja (pip install ninja, or the ninja-build package): torch builds the CUDA extension with it")
if [[ -z "${CUDA_HOME:-}" && -x /usr/local/cuda/bin/nvcc ]]; then export CUDA_HOME=/usr/local/cuda; fi
NVCC="$(command -v nvcc || true)"
[[ -z "$NVCC" && -n "${CUDA_HOME:-}" && -x "$CUDA_HOME/bin/nvcc" ]] && NVCC="$CUDA_HOME/bin/nvcc"
[[ -n "$NVCC" ]] || missing+=("nvcc (CUDA toolkit; set CUDA_HOME): the CUDA backend compiles its kernels with it")
"$PY" -c "import triton" 2> /dev/null || missing+=("triton: the Triton backend's rows and tests fail")
"$PY" -c "import pytest" 2> /dev/null || missing+=("pytest: step 3 (the GPU tests) cannot run")
if (( ${#missing[@]} )); then
  for m in "${missing[@]}"; do log "MISSING: $m"; done
  log "continuing: the steps that need these report it in their rows"
else
  log "preflight ok: Python.h, ninja, nvcc ($NVCC)"
fi

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
CACHE="${HYP_CACHE:-${TMPDIR:-/tmp}/hypencoder_gpu_check}"
mkdir -p "$CACHE"
export TORCH_EXTENSIONS_DIR="$CACHE/torch_extensions" TRITON_CACHE_DIR="$CACHE/triton"
export HYP_BENCH_CACHE="$CACHE/graph" HF_HUB_OFFLINE=1
export HYPENCODER_TRITON_AUTOTUNE="${HYPENCODER_TRITON_AUTOTUNE:-2}"  # the first two shipped tiles
export HYPENCODER_NO_SHARED_DATA=1  # ../shared does not travel to the GPU machine
# Caps of steps 1 and 2; step 3 gets what is left of the total (at least 30 s).
if (( DRY )); then
  export TRITON_INTERPRET=1
  caps=(80 25) total=135
else
  export TRITON_INTERPRET=0  # compiled Triton (conftest would default to the interpreter)
  caps=(230 100) total=405
fi

if command -v nvidia-smi > /dev/null; then nvidia-smi 2>&1 | head -20 >> "$LOG"; else echo "nvidia-smi: not available" >> "$LOG"; fi
"$PY" - >> "$LOG" 2>&1 <<'PY'
import sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "device", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
try:
    import triton
    print("triton", triton.__version__)
except Exception as e:
    print("triton missing:", e)
from engine import backends
print({k: v[:120] for k, v in backends.available_backends().items()})
PY

# Runs a step under a time cap; its output goes to $OUT/$2 as it is written.
step() {
  local cap="$1" file="$2"; shift 2
  log "start: $* (cap ${cap}s) > $file"
  timeout --kill-after=5 "$cap" "$@" > "$OUT/$file" 2>&1
  local rc=$?
  echo "exit $rc" >> "$OUT/$file"
  if (( rc == 124 || rc == 137 )); then log "TIMEOUT after ${cap}s: $file keeps what was written"; 
  elif (( rc != 0 )); then log "FAILED (exit $rc): see $file"; fi
  tail -5 "$OUT/$file" | sed 's/^/    /' | tee -a "$LOG"
}

# 1. The kernel benchmark (tables row by row into bench_gpu.md / .jsonl).
dry_flag=()
(( DRY )) && dry_flag=(--dry-run)
step "${caps[0]}" bench_gpu.txt "$PY" bench/bench_gpu.py --out "$OUT" --budget $(( caps[0] - 15 )) "${dry_flag[@]}"

# 2. Graph search at 8.8M on the device (bench/bench_graph.py --gpu); a failure or a
# timeout here leaves the later steps running.
if (( DRY )); then
  step "${caps[1]}" bench_graph.txt "$PY" -m bench.bench_graph --gpu-dry-run
else
  step "${caps[1]}" bench_graph.txt "$PY" -m bench.bench_graph --gpu --gpu-n "${GPU_N:-8800000}"
fi

# 3. The GPU-specific tests (kernels against the reference, the backends' own checks).
left=$(( total - ($(date +%s) - start) ))
(( left < 30 )) && left=30
HYPENCODER_KERNEL_GRID=quick HYPENCODER_TRITON_AUTOTUNE=0 step "$left" pytest.txt \
  "$PY" -m pytest -v -rs -p no:cacheprovider tests/test_backends.py tests/test_cuda_backend.py \
  tests/test_kernels.py tests/test_triton_backend.py tests/test_cuda_quant.py tests/test_triton_quant.py
log "done; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
