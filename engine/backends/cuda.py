"""CUDA C++ backend: the tensor-core kernels of ``csrc/cuda``, compiled at first use.

``torch.utils.cpp_extension.load`` builds ``bindings.cpp`` and ``qnet_fused.cu`` (the
repository's ``csrc/cuda``, installed as the package data ``engine.cuda_src`` and found
through ``importlib.resources``) for the local GPU the first time a kernel is needed and
caches the build (in ``$TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``),
so importing the package never needs nvcc. ``setup.py`` leaves these sources out of the
CPU extension.

The kernels take float16 or bfloat16 q-nets (tensor cores). A float32 q-net is scored
by the Triton backend when it can run (and has not failed: then once a warning), else by
the PyTorch reference: the fp32 path of tensor cores (tf32) would not give the float32
results a float32 caller asks for.

Compressed documents: int8 or float8_e4m3fn ``vectors`` with ``scales=`` float32 (n,)
(engine.backends.doc_scales), read as stored and scaled in the kernel.
"""

from __future__ import annotations

import importlib.resources
import os
import pathlib
import threading
import warnings

import torch

from ..qnet_config import QNetConfig
from .doc_scales import check_scales

_SOURCES = ("bindings.cpp", "qnet_fused.cu")
_MIN_CC = (8, 0)  # bf16 WMMA

_ext = None
_build_error: str | None = None
_lock = threading.Lock()


def source_dir() -> pathlib.Path:
    """The folder of the CUDA sources (the package data ``engine.cuda_src``)."""
    return pathlib.Path(str(importlib.resources.files("engine.cuda_src")))


def _nvcc() -> str | None:
    try:
        from torch.utils.cpp_extension import CUDA_HOME
    except Exception:
        return None
    if CUDA_HOME and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
        return os.path.join(CUDA_HOME, "bin", "nvcc")
    return None


def is_available() -> tuple[bool, str]:
    if _build_error:
        return False, _build_error
    if torch.version.cuda is None:
        return False, "this torch build has no CUDA support"
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    src = source_dir()
    missing = [s for s in _SOURCES if not (src / s).is_file()]
    if missing:
        return False, f"CUDA sources missing under {src}: {missing}"
    if _ext is None and _nvcc() is None:
        return False, "nvcc not found (set CUDA_HOME) to build the CUDA kernels"
    cc = torch.cuda.get_device_capability()
    if cc < _MIN_CC:
        return False, f"the CUDA kernels need compute capability >= 8.0, device has {cc[0]}.{cc[1]}"
    return True, "ok"


def supports(device: torch.device) -> bool:
    return torch.device(device).type == "cuda"


def extension():
    """The compiled module (built on the first call; the failure is remembered)."""
    global _ext, _build_error
    if _ext is not None:
        return _ext
    with _lock:
        if _ext is None:
            if _build_error:
                raise RuntimeError(_build_error)
            from torch.utils.cpp_extension import load

            src = source_dir()
            try:
                _ext = load(
                    name="hypencoder_cuda_qnet",
                    sources=[str(src / s) for s in _SOURCES],
                    extra_include_paths=[str(src)],
                    extra_cflags=["-O3"],
                    extra_cuda_cflags=["-O3", "-lineinfo"],
                    verbose=os.environ.get("HYPENCODER_VERBOSE_BUILD") == "1",
                )
            except Exception as e:  # keep the reason: is_available() reports it from now on
                _build_error = f"building the CUDA kernels failed: {e}"
                raise RuntimeError(_build_error) from e
    return _ext


# Set once the Triton kernels have failed on a float32 q-net (a compile error, a missing
# compiler): float32 q-nets then go to the reference for the rest of the process.
_triton_fp32_error: str | None = None


def _fp32_backends(device) -> list:
    """Who scores float32 q-nets, in order: Triton when it can run (exact float32 through
    IEEE dots), then the PyTorch reference, which always can."""
    from . import get_backend

    out = []
    if _triton_fp32_error is None:
        try:
            out.append(get_backend("triton", device))
        except RuntimeError:  # Triton missing, or interpreting
            pass
    return out + [get_backend("torch", device)]


def _fp32_call(method: str, vectors, *args, scales=None):
    """``backend.method(*args)`` on the first float32 backend that runs it. A failure of
    the Triton kernels other than bad input (a ValueError or TypeError, passed on) is
    reported once as a warning and sends float32 q-nets to the reference from then on."""
    global _triton_fp32_error
    kw = {} if scales is None else {"scales": scales}
    for be in _fp32_backends(vectors.device):
        fn = getattr(be, method, None)
        if fn is None:  # the reference has no fused top-k: stream its dense scores
            return _stream_topk(be, *args, **kw)
        if be.name != "triton":
            return fn(*args, **kw)
        try:
            return fn(*args, **kw)
        except (ValueError, TypeError):
            raise
        except Exception as e:  # noqa: BLE001 - any compile or launch failure
            _triton_fp32_error = f"{type(e).__name__}: {e}"
            warnings.warn("the CUDA backend scores float32 q-nets with the Triton kernels, which failed "
                          f"({_triton_fp32_error.splitlines()[0][:300]}); using the PyTorch reference instead",
                          RuntimeWarning, stacklevel=3)
    raise AssertionError("the reference backend always runs")


def _prepare(weights, biases, config: QNetConfig, vectors):
    from .cuda_launch import prepare

    return prepare(extension(), weights, biases, config, vectors)


def score_dense(weights, biases, config, vectors, out=None, *, scales=None):
    """``(Q, n)`` float32 scores (engine.backends.protocol); ``scales`` float32 (n,) is
    required for int8/float8_e4m3fn ``vectors`` and refused otherwise (ValueError)."""
    scales = check_scales(vectors, scales)
    if weights[0].dtype == torch.float32:
        return _fp32_call("score_dense", vectors, weights, biases, config, vectors, out, scales=scales)
    from .cuda_launch import run_dense

    return run_dense(_prepare(weights, biases, config, vectors), vectors, out, scales)


def score_gather(weights, biases, config, vectors, ids, out=None, *, scales=None):
    """``(Q, m)`` float32: ``out[q, j]`` scores row ``ids[q, j]``; ``scales`` as for
    :func:`score_dense` (row ``i``'s scale is ``scales[i]``)."""
    scales = check_scales(vectors, scales)
    if weights[0].dtype == torch.float32:
        return _fp32_call("score_gather", vectors, weights, biases, config, vectors, ids, out, scales=scales)
    from .cuda_launch import run_gather

    return run_gather(_prepare(weights, biases, config, vectors), vectors, ids, out, scales)


def exact_topk(weights, biases, config, vectors, k, block_size=None, *, scales=None):
    """``(scores (Q, k) float32, ids (Q, k) int64)`` best first; ``scales`` as for
    :func:`score_dense`."""
    if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
        raise ValueError(f"k must be a positive int, got {k!r}")
    scales = check_scales(vectors, scales)
    if weights[0].dtype == torch.float32:
        return _fp32_call("exact_topk", vectors, weights, biases, config, vectors, k, block_size, scales=scales)
    from .cuda_launch import run_topk

    return run_topk(_prepare(weights, biases, config, vectors), vectors, k, block_size, scales)


def _stream_topk(be, weights, biases, config, vectors, k, block_size, scales=None):
    """Exact top-k through ``be.score_dense`` block by block (the fp32 fallback)."""
    from . import topk_keys

    block = int(block_size or (1 << 16))
    running = None
    for s in range(0, vectors.shape[0], block):
        kw = {} if scales is None else {"scales": scales[s : s + block]}
        sc = be.score_dense(weights, biases, config, vectors[s : s + block], **kw)
        ids = torch.arange(s, s + sc.shape[1], device=sc.device).expand_as(sc)
        running = topk_keys.merge_topk(running, topk_keys.encode(sc, ids), k)
    if running is None:
        running = torch.empty((weights[0].shape[0], 0), dtype=torch.int64, device=vectors.device)
    return topk_keys.finish(running, k)
