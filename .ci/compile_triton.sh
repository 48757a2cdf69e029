#!/usr/bin/env bash
# Compile-check the Triton kernels without a GPU: every shipped kernel configuration
# (engine.kernels.aot: each kernel module's launch variants times its autotune configs)
# through Triton's own compiler down to a cubin, for sm_80 and sm_90, with each result's
# shared memory checked against the architecture's limit. The interpreter the tests use
# cannot see these failures. Exits non-zero if any compilation fails. Extra arguments go
# to engine.kernels.aot (e.g. --file some_kernels.py, --arch 90, --jobs 4).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
TRITON_INTERPRET=0 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m engine.kernels.aot --arch 80 90 "$@"
