"""How tensors and q-nets cross into ``engine._C``: the one place that turns them into
numpy views and kernel flags, used by the cpu backend and the native graph search.
Imports nothing of the high-level API.

It also holds the CPU kernels' precision policy (``HYPENCODER_CPU_PRECISION``, or
:func:`set_precision`), applied to every q-net that crosses here:

* ``"auto"`` (default): q-nets in float32 over float32 vectors are computed exactly in
  float32; when the q-net or the vectors are float16 or bfloat16 (or the vectors int8 /
  float8 e4m3, see :mod:`engine.quant`), the hidden layers are
  computed in bfloat16 (AMX tiles or AVX512-BF16 dot products) where the CPU has such a
  kernel, and exactly in float32 elsewhere;
* ``"fp32"``: always exactly in float32 (half-precision inputs converted exactly);
* ``"bf16"``: the bfloat16 kernel for every q-net, float32 ones included (for speed).

Computing in bfloat16 means: weights rounded to bfloat16 once when packed, activations
rounded to bfloat16 before each hidden layer, float32 accumulation; biases, layer norm,
residuals and the output layer stay float32, and so do the scores.
"""

from __future__ import annotations

import contextlib
import os
import threading

import numpy as np
import torch

PRECISIONS = ("auto", "fp32", "bf16")


def _check_precision(p) -> str:
    if p not in PRECISIONS:
        raise ValueError(f"CPU precision must be one of {', '.join(PRECISIONS)}, got {p!r}")
    return p


_ENV_PRECISION = os.environ.get("HYPENCODER_CPU_PRECISION", "").strip() or "auto"
_PRECISION_ERROR = None
try:
    _precision = _check_precision(_ENV_PRECISION)
except ValueError as e:
    _precision = "auto"
    _PRECISION_ERROR = f"HYPENCODER_CPU_PRECISION: {e}"


_local = threading.local()


def precision() -> str:
    """The CPU kernels' precision policy now, in this thread: ``"auto"``, ``"fp32"`` or
    ``"bf16"``."""
    return getattr(_local, "precision", None) or _precision


@contextlib.contextmanager
def precision_scope(p: str):
    """Within the block, this thread's calls use policy ``p`` (``"auto"``, ``"fp32"`` or
    ``"bf16"``) whatever the process-wide one; ValueError for another name. For a caller
    that needs float32 arithmetic (ground truth, the final scores of a graph search)."""
    p = _check_precision(p)
    prev = getattr(_local, "precision", None)
    _local.precision = p
    try:
        yield
    finally:
        _local.precision = prev


def set_precision(p: str) -> None:
    """Set the CPU kernels' precision policy for the process (see the module docstring);
    ValueError for another name. Packed weights of the other precision are not reused."""
    global _precision, _PRECISION_ERROR
    _precision = _check_precision(p)
    _PRECISION_ERROR = None


def precision_error() -> str | None:
    """Why ``HYPENCODER_CPU_PRECISION`` was refused, or None."""
    return _PRECISION_ERROR


def _is_fp32(dtype) -> bool:
    if isinstance(dtype, torch.dtype):
        return dtype == torch.float32
    return np.dtype(dtype) == np.float32


def bf16_requested(weight_dtype, vector_dtype) -> bool:
    """Whether the policy asks for the bfloat16 kernel for q-nets of ``weight_dtype`` over
    vectors of ``vector_dtype`` (torch or numpy dtypes; numpy uint16 is bfloat16). The
    kernel honours it only where the CPU has a bfloat16 kernel."""
    p = precision()
    if p != "auto":
        return p == "bf16"
    return not (_is_fp32(weight_dtype) and _is_fp32(vector_dtype))


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A C-contiguous numpy view of a CPU tensor (copied only when not contiguous);
    bfloat16 travels as its raw 16 bits (uint16), float8 e4m3 as its raw byte (uint8)."""
    t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.uint16)
    elif t.dtype == torch.float8_e4m3fn:
        t = t.view(torch.uint8)
    return t.numpy()


def qnet_args(weights, biases, config, vector_dtype=torch.float32) -> dict:
    """``weights``, ``biases`` and ``flags`` as every ``engine._C`` q-net entry point takes
    them, for scoring vectors of ``vector_dtype`` (numpy views, no copies of contiguous
    tensors). The flags are :meth:`QNetConfig.kernel_flags` plus ``bf16``
    (:func:`bf16_requested`). float16 weights travel as they are: the native call widens
    them to float32 itself, with the GIL released (a torch conversion here would run on
    torch's intra-op threads, whose barriers cost milliseconds when another process keeps a
    core busy)."""
    flags = dict(config.kernel_flags(), bf16=bf16_requested(weights[0].dtype, vector_dtype))
    return {"weights": [to_numpy(w) for w in weights], "biases": [to_numpy(b) for b in biases],
            "flags": flags}
