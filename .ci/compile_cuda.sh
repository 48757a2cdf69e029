#!/usr/bin/env bash
# Compile-check the CUDA sources without a GPU: every csrc/cuda/*.cu with nvcc for sm_80
# and sm_90 (-c to a temporary object), and the torch/pybind11 binding (csrc/cuda/*.cpp)
# with the host compiler against the installed torch's headers (syntax only: linking
# needs a CUDA torch). Exits non-zero on the first failure. Needs nvcc (NVCC=..., PATH,
# or /usr/local/cuda) and, for the binding, python with torch importable.
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC="${NVCC:-$(command -v nvcc || true)}"
for c in /usr/local/bin/nvcc /usr/local/cuda/bin/nvcc; do
  [[ -z "$NVCC" && -x "$c" ]] && NVCC="$c"
done
if [[ -z "$NVCC" ]]; then
  echo "compile_cuda: nvcc not found (set NVCC=/path/to/nvcc)" >&2
  exit 2
fi
PY="${PYTHON:-python}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "compile_cuda: $("$NVCC" --version | tail -1)"

shopt -s nullglob
cu_files=(csrc/cuda/*.cu)
cpp_files=(csrc/cuda/*.cpp)
if (( ${#cu_files[@]} == 0 )); then
  echo "compile_cuda: no .cu files under csrc/cuda" >&2
  exit 1
fi

# The two architectures in parallel (one nvcc each; the CI machine has 2 cores).
pids=()
for arch in 80 90; do
  (
    for f in "${cu_files[@]}"; do
      obj="$tmp/$(basename "$f" .cu).sm_$arch.o"
      "$NVCC" -std=c++17 -O3 -arch=sm_$arch -Icsrc/cuda -c "$f" -o "$obj" > "$tmp/log.$arch" 2>&1 \
        || { cat "$tmp/log.$arch"; echo "compile_cuda: FAILED $f for sm_$arch" >&2; exit 1; }
      cat "$tmp/log.$arch"
      echo "compile_cuda: ok  $f  sm_$arch  ($(stat -c %s "$obj") bytes)"
    done
  ) &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
(( status == 0 )) || exit 1

if (( ${#cpp_files[@]} )); then
  incs="$("$PY" - <<'PY'
import sysconfig
from torch.utils.cpp_extension import include_paths
print(" ".join("-I" + p for p in include_paths() + [sysconfig.get_paths()["include"]]))
PY
)"
  for f in "${cpp_files[@]}"; do
    # shellcheck disable=SC2086
    ${CXX:-g++} -std=c++20 -fsyntax-only -DTORCH_EXTENSION_NAME=hyp_check \
      -DTORCH_API_INCLUDE_EXTENSION_H $incs -Icsrc/cuda "$f" \
      || { echo "compile_cuda: FAILED $f (host compiler, torch headers)" >&2; exit 1; }
    echo "compile_cuda: ok  $f  (syntax, torch headers)"
  done
fi
echo "compile_cuda: all CUDA sources compile"
