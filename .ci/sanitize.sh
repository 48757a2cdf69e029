#!/usr/bin/env bash
# The native code under AddressSanitizer and UndefinedBehaviorSanitizer: a copy of the
# tracked files is built with HYPENCODER_SANITIZE=address,undefined (every report fatal),
# then the tests that drive engine._C run there: the fuzz of every entry point, threads,
# fork and concurrency, graph and exact search, the CPU kernels. The Python host is not
# instrumented, so libasan (and libstdc++, whose exceptions ASan intercepts) are
# preloaded; leak detection is off (the interpreter keeps memory until exit by design).
# About 2-3 minutes to build and 3 to test on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
CXX_BIN="${CXX:-g++}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git ls-files -z | xargs -0 cp --parents -t "$work"
cd "$work"
echo "sanitizer build in $work"
HYPENCODER_SANITIZE=address,undefined "$PY" setup.py -q build_ext --inplace -j 2 >build.log 2>&1 || {
  tail -50 build.log
  exit 1
}
preload="$("$CXX_BIN" -print-file-name=libasan.so) $("$CXX_BIN" -print-file-name=libstdc++.so)"
for lib in $preload; do
  [ -e "$lib" ] || { echo "sanitize: $lib not found (install the compiler's libasan)"; exit 1; }
done
LD_PRELOAD="$preload" \
ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
HYPENCODER_HANDOFF_US=0 \
  "$PY" -m pytest -q -p no:cacheprovider \
  tests/test_fuzz_native.py tests/test_serving.py tests/test_graph.py tests/test_exact_search.py \
  tests/test_cpu_backend.py
