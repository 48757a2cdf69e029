"""Public scoring operations: validate once, then dispatch to a backend."""

from __future__ import annotations

import numpy as np
import torch

from . import backends
from .qnet import SUPPORTED_DTYPES, QNet
from .quant import check_scales, dequantize, has_nan_fp8, is_quantized

_INT_DTYPES = (torch.int32, torch.int64)


def as_vectors(vectors, *, name: str = "vectors", check_finite: bool = True,
               quantized: bool = False) -> torch.Tensor:
    """Validate a ``(n, d)`` float32/float16/bfloat16 tensor (numpy arrays are wrapped, in
    native byte order); with ``quantized``, int8 / float8_e4m3fn rows too (their scales are
    checked by :func:`engine.quant.check_scales`). Scores carry no gradient: a tensor that
    requires grad is read detached."""
    if isinstance(vectors, np.ndarray):
        if vectors.dtype.kind != "f" or vectors.dtype.itemsize not in (2, 4):
            raise TypeError(
                f"{name} has unsupported dtype {vectors.dtype}; use float32, float16 or bfloat16 "
                "(e.g. .astype(np.float32))"
            )
        vectors = torch.from_numpy(np.ascontiguousarray(vectors, dtype=vectors.dtype.newbyteorder("=")))
    if not isinstance(vectors, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(vectors).__name__}")
    if quantized and is_quantized(vectors.dtype):
        if vectors.dim() != 2:
            raise ValueError(f"{name} must be 2-D (n, d), got shape {tuple(vectors.shape)}")
        if check_finite and vectors.dtype == torch.float8_e4m3fn and has_nan_fp8(vectors):
            raise ValueError(f"{name} contains NaN")
        return vectors
    if vectors.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} has unsupported dtype {vectors.dtype}; use float32, float16 or bfloat16 "
                        "(e.g. .float())" + ("; int8 / float8_e4m3fn with scales=" if quantized else ""))
    if vectors.dim() != 2:
        raise ValueError(f"{name} must be 2-D (n, d), got shape {tuple(vectors.shape)}")
    if vectors.device.type == "meta":
        raise ValueError(f"{name} are on the meta device (no data)")
    if vectors.requires_grad:
        vectors = vectors.detach()
    if check_finite and vectors.numel() and not bool(torch.isfinite(vectors).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    return vectors


def check_qnets(qnets) -> QNet:
    """``qnets`` as scoring reads them: a :class:`QNet`, detached if it requires grad."""
    if not isinstance(qnets, QNet):
        raise TypeError(f"qnets must be an engine.QNet, got {type(qnets).__name__}")
    if any(t.requires_grad for t in qnets.weights + qnets.biases):
        qnets = qnets._map(torch.Tensor.detach)
    return qnets


def check_backend(backend) -> str:
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str ('auto', 'torch', 'cpu', 'triton' or 'cuda'), "
                        f"got {type(backend).__name__}")
    return backend


def check_pair(qnets: QNet, vectors: torch.Tensor) -> None:
    if vectors.shape[1] != qnets.dim:
        raise ValueError(
            f"dimension mismatch: q-nets read {qnets.dim}-d vectors, vectors are {vectors.shape[1]}-d"
        )
    if vectors.device != qnets.device:
        raise ValueError(f"q-nets are on {qnets.device} but vectors are on {vectors.device}")


def check_ids(ids, num_queries: int, n: int, device) -> torch.Tensor:
    if isinstance(ids, np.ndarray):
        ids = torch.from_numpy(ids)
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"ids must be a torch.Tensor, got {type(ids).__name__}")
    if ids.dtype not in _INT_DTYPES:
        raise TypeError(f"ids must be int32 or int64, got {ids.dtype}")
    if ids.dim() != 2 or ids.shape[0] != num_queries:
        raise ValueError(f"ids must have shape ({num_queries}, m), got {tuple(ids.shape)}")
    if ids.device != torch.device(device):
        raise ValueError(f"ids are on {ids.device} but vectors are on {device}")
    if ids.numel():
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= n:
            raise ValueError(f"ids out of range: found {lo if lo < 0 else hi}, valid ids are 0..{n - 1}")
    return ids


def _check_out(out, shape, device) -> None:
    if out is None:
        return
    if not isinstance(out, torch.Tensor) or out.dtype != torch.float32:
        raise TypeError("out must be a float32 torch.Tensor")
    if out.requires_grad:
        raise ValueError("out must not require grad (scores are written into it in place)")
    if tuple(out.shape) != tuple(shape) or out.device != torch.device(device):
        raise ValueError(f"out must have shape {tuple(shape)} on {device}, got {tuple(out.shape)} on {out.device}")


def score(qnets: QNet, vectors, *, backend: str = "auto", out: torch.Tensor | None = None,
          scales: torch.Tensor | None = None) -> torch.Tensor:
    """Score every document with every q-net.

    Args:
        qnets: :class:`QNet` with ``Q`` q-nets of input width ``d`` (fp32, fp16 or bf16).
        vectors: ``(n, d)`` document vectors, float32, float16 or bfloat16, on the q-nets'
            device.
        backend: ``"auto"`` (the fastest available for the device), ``"torch"``,
            ``"cpu"``, ``"triton"`` or ``"cuda"``.
        out: optional ``(Q, n)`` float32 tensor to write into.
        scales: ``(n,)`` float32 per-row scales, required when ``vectors`` are int8 or
            float8_e4m3fn (row i stands for ``vectors[i].float() * scales[i]``, see
            :mod:`engine.quant`), refused otherwise.

    Returns:
        ``(Q, n)`` float32 scores (accumulated in float32 on every backend).
    """
    qnets = check_qnets(qnets)
    backend = check_backend(backend)
    vectors = as_vectors(vectors, quantized=True)
    scales = check_scales(vectors, scales)
    check_pair(qnets, vectors)
    shape = (qnets.num_queries, vectors.shape[0])
    _check_out(out, shape, vectors.device)
    if vectors.shape[0] == 0:
        return out if out is not None else torch.empty(shape, dtype=torch.float32, device=vectors.device)
    be = backends.get_backend(backend, vectors.device)
    if scales is None:
        return be.score_dense(qnets.weights, qnets.biases, qnets.config, vectors, out)
    backends.check_storage(be, vectors.dtype)
    return be.score_dense(qnets.weights, qnets.biases, qnets.config, vectors, out, scales=scales)


def score_gather(
    qnets: QNet, vectors, ids, *, backend: str = "auto", out: torch.Tensor | None = None,
    scales: torch.Tensor | None = None,
) -> torch.Tensor:
    """Score, for each query ``q``, the documents ``ids[q]``.

    Args:
        qnets: :class:`QNet` with ``Q`` q-nets of input width ``d``.
        vectors: ``(n, d)`` document vectors, float32, float16 or bfloat16.
        ids: ``(Q, m)`` int32 or int64 row indices into ``vectors``, each in ``[0, n)``.
        backend: as for :func:`score`.
        out: optional ``(Q, m)`` float32 tensor to write into.
        scales: as for :func:`score`; row ``ids[q, j]`` takes ``scales[ids[q, j]]``.

    Returns:
        ``(Q, m)`` float32 scores: ``out[q, j]`` is q-net ``q`` applied to
        ``vectors[ids[q, j]]``.
    """
    qnets = check_qnets(qnets)
    backend = check_backend(backend)
    # Only the gathered rows are checked for NaN/Inf: checking the whole corpus on every
    # call would cost more than the scoring in a graph search's inner loop.
    vectors = as_vectors(vectors, check_finite=False, quantized=True)
    scales = check_scales(vectors, scales, check_values=False)
    check_pair(qnets, vectors)
    ids = check_ids(ids, qnets.num_queries, vectors.shape[0], vectors.device)
    if ids.numel():
        rows = ids.reshape(-1).long()
        picked = vectors[rows] if scales is None else dequantize(vectors, scales, rows)
        if not bool(torch.isfinite(picked).all()):
            raise ValueError("vectors named by ids contain NaN or Inf" + ("" if scales is None else " (or bad scales)"))
    shape = tuple(ids.shape)
    _check_out(out, shape, vectors.device)
    if ids.numel() == 0:
        return out if out is not None else torch.empty(shape, dtype=torch.float32, device=vectors.device)
    be = backends.get_backend(backend, vectors.device)
    if scales is None:
        return be.score_gather(qnets.weights, qnets.biases, qnets.config, vectors, ids, out)
    backends.check_storage(be, vectors.dtype)
    return be.score_gather(qnets.weights, qnets.biases, qnets.config, vectors, ids, out, scales=scales)
