"""Backend "cpu": fused C++ q-net kernels (csrc/cpu) for tensors on the CPU.

One build runs on any x86-64: the kernel's instruction set (portable, avx2, avx512,
avx512_bf16) is chosen at run time from the CPU, or forced with the environment variable
``HYPENCODER_CPU_ISA`` (read at import; a name the CPU cannot run makes the backend
unavailable with that reason) or :func:`set_isa`. Threads: ``torch.get_num_threads()``
unless a call gives ``num_threads``.

Tensors travel to C++ as numpy views (bfloat16 as uint16), copied only when they are not
contiguous. Accumulation is float32 for every dtype.
"""

from __future__ import annotations

import os

import numpy as np
import torch

try:
    from .. import _C

    _IMPORT_ERROR = None if hasattr(_C, "cpu_score_dense") else "engine._C was built without the CPU kernels"
except ImportError as e:  # the extension is not built
    _C = None
    _IMPORT_ERROR = f"engine._C is not built ({e}); run pip install -e ."

_ISA_ERROR = None
if _C is not None and _IMPORT_ERROR is None:
    _env = os.environ.get("HYPENCODER_CPU_ISA", "").strip()
    if _env:
        try:
            _C.cpu_set_isa(_env)
        except ValueError as e:
            _ISA_ERROR = f"HYPENCODER_CPU_ISA={_env!r}: {e}"


def is_available() -> tuple[bool, str]:
    if _IMPORT_ERROR:
        return False, _IMPORT_ERROR
    if _ISA_ERROR:
        return False, _ISA_ERROR
    return True, "ok"


def supports(device: torch.device) -> bool:
    return torch.device(device).type == "cpu"


def isa() -> str:
    """The instruction set the kernels use now (e.g. ``"avx2"``)."""
    return _C.cpu_isa()


def supported_isas() -> list[str]:
    """Instruction sets this CPU can run, weakest first."""
    return list(_C.cpu_supported_isas())


def set_isa(name: str) -> None:
    """Force ``name`` (``"auto"``: the best this CPU supports); ValueError if it cannot."""
    _C.cpu_set_isa(name)


def _np(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a CPU tensor (bfloat16 as uint16), contiguous."""
    if not t.is_contiguous():
        t = t.contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.uint16)
    return t.numpy()


def _qnet_args(weights, biases, config) -> dict:
    # float16 weights become float32 once per call: the kernels compute in float32, and
    # this costs one pass over the weights, small next to scoring any block of documents.
    def conv(t):
        return t.float() if t.dtype == torch.float16 else t

    return dict(
        weights=[_np(conv(w)) for w in weights],
        biases=[_np(conv(b)) for b in biases],
        relu=config.activation == "relu",
        layer_norm=bool(config.layer_norm),
        residual=bool(config.residual),
        residual_on_last=bool(config.residual_on_last),
        layer_norm_before_residual=bool(config.layer_norm_before_residual),
        eps=float(config.eps),
    )


def _threads(num_threads) -> int:
    return int(num_threads) if num_threads is not None else max(1, torch.get_num_threads())


def _out(out, shape):
    """(tensor the caller gets, float32 contiguous tensor the kernel writes)."""
    if out is None:
        t = torch.empty(shape, dtype=torch.float32)
        return t, t
    if out.is_contiguous():
        return out, out
    return out, torch.empty(shape, dtype=torch.float32)


def score_dense(weights, biases, config, vectors, out=None, *, num_threads=None, block_size=None):
    Q, n = weights[0].shape[0], vectors.shape[0]
    res, buf = _out(out, (Q, n))
    _C.cpu_score_dense(
        **_qnet_args(weights, biases, config),
        vectors=_np(vectors),
        out=buf.numpy(),
        num_threads=_threads(num_threads),
        block_size=int(block_size or 0),
    )
    if buf is not res:
        res.copy_(buf)
    return res


def score_gather(weights, biases, config, vectors, ids, out=None, *, num_threads=None, block_size=None):
    res, buf = _out(out, tuple(ids.shape))
    ids = ids.to(torch.int64)
    _C.cpu_score_gather(
        **_qnet_args(weights, biases, config),
        vectors=_np(vectors),
        ids=_np(ids),
        out=buf.numpy(),
        num_threads=_threads(num_threads),
        block_size=int(block_size or 0),
    )
    if buf is not res:
        res.copy_(buf)
    return res


def exact_topk(weights, biases, config, vectors, k, block_size=None, *, num_threads=None):
    """Exact top-``k`` of every query over all of ``vectors`` (which may wrap an
    ``np.memmap``; it is streamed block by block, never copied when contiguous).

    Returns ``(scores float32 (Q, k), ids int64 (Q, k))``, best first, ties broken by the
    lower id; when ``k > n`` the missing slots hold score ``-inf`` and id ``-1``.
    """
    if isinstance(vectors, np.ndarray):
        vec = vectors if vectors.flags.c_contiguous else np.ascontiguousarray(vectors)
    else:
        vec = _np(vectors)
    s, i = _C.cpu_exact_topk(
        **_qnet_args(weights, biases, config),
        vectors=vec,
        k=int(k),
        num_threads=_threads(num_threads),
        block_size=int(block_size or 0),
    )
    return torch.from_numpy(s), torch.from_numpy(i)
