#!/usr/bin/env bash
# One-shot GPU check for a machine with a GPU, torch (CUDA) and Triton but no network:
# the whole test suite on the GPU, bench/bench_gpu.py (fused kernels, issue 5), then
# bench/bench_graph.py --gpu (graph search at 8.8M, issue 4 (c)). Installs nothing; the
# package is used from the source tree (PYTHONPATH). Everything lands in $OUT (default
# ./gpu_out). Budget: under 8 minutes in all (170 s tests, at most 150 s kernels, the
# rest graph search).
#
#   OUT=/some/dir [GPU_N=8800000] bash bench/gpu_check.sh [--quick]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_INTERPRET=0  # compiled Triton on the GPU (conftest would default to the interpreter)
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$OUT/.torch_extensions}"
PY="${PYTHON:-python}"
start=$(date +%s)
log() { echo "[gpu_check $(( $(date +%s) - start ))s] $*" | tee -a "$OUT/gpu_check.log"; }

{ nvidia-smi || true; } > "$OUT/nvidia-smi.txt" 2>&1
"$PY" - <<'PY' 2>&1 | tee "$OUT/env.txt"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "device",
      torch.cuda.get_device_name() if torch.cuda.is_available() else None)
try:
    import triton; print("triton", triton.__version__)
except Exception as e:
    print("triton missing:", e)
from engine import backends
print(backends.available_backends())
PY

# The CPU extension (engine._C) some tests use: build in place if pybind11 is there.
if ! "$PY" -c "import engine._C" 2>/dev/null; then
  if "$PY" -c "import pybind11" 2>/dev/null; then
    log "building engine._C in place"
    timeout 120 "$PY" setup.py -q build_ext --inplace > "$OUT/build_ext.log" 2>&1 || log "engine._C build failed (see build_ext.log)"
  else
    log "no pybind11: engine._C not built; tests needing it will fail or skip"
  fi
fi

# Tests: the whole suite, with the kernel tests compiled on the GPU (one Triton config: no
# autotune sweep in tests). ../shared does not travel to the GPU machine: the tests that need
# the real data set skip there (and only there) with HYPENCODER_NO_SHARED_DATA=1.
log "pytest: the full suite"
HYPENCODER_NO_SHARED_DATA=1 HYPENCODER_TRITON_AUTOTUNE=0 timeout 170 "$PY" -m pytest -q -rs \
  -p no:cacheprovider tests > "$OUT/pytest.txt" 2>&1
echo "exit $?" >> "$OUT/pytest.txt"; tail -25 "$OUT/pytest.txt"

log "bench/bench_gpu.py"
# At most 150 s: the rest of the 470 s is the graph benchmark's.
left=$(( 470 - 180 - ($(date +%s) - start) ))
(( left > 150 )) && left=150
(( left < 60 )) && left=60
timeout "$left" "$PY" bench/bench_gpu.py --out "$OUT" "$@" > "$OUT/bench_gpu.txt" 2>&1
echo "exit $?" >> "$OUT/bench_gpu.txt"
tail -40 "$OUT/bench_gpu.txt"

# Graph search on the device (issue 4, case (c): 8.8M x 768 bf16, 6-layer q-nets; the
# corpus is drawn on the device and its graph built there by k-means clusters).
# The same code path runs on CPU tensors with --gpu-dry-run.
GPU_N="${GPU_N:-8800000}"
log "bench/bench_graph.py --gpu --gpu-n $GPU_N"
left=$(( 470 - ($(date +%s) - start) ))
(( left < 90 )) && left=90
HYP_BENCH_CACHE="$OUT/graph_cache" timeout "$left" "$PY" bench/bench_graph.py --gpu --gpu-n "$GPU_N" \
  --png "$OUT/graph_gpu.png" > "$OUT/bench_graph_gpu.txt" 2>&1
echo "exit $?" >> "$OUT/bench_graph_gpu.txt"
tail -30 "$OUT/bench_graph_gpu.txt"
log "done"
