"""Triton backend: the fused q-net kernels of ``kernels/``.

Runs on CUDA tensors; under ``TRITON_INTERPRET=1`` Triton interprets the same kernels on
the CPU, which is how CI checks them without a GPU (slowly: tests only).
"""

from __future__ import annotations

import os

import torch

from ..qnet_config import QNetConfig

_import_error: str | None = None
try:
    import triton  # noqa: F401
except Exception as e:  # pragma: no cover - Triton is an optional dependency
    _import_error = f"triton cannot be imported ({e})"


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def is_available() -> tuple[bool, str]:
    if _import_error:
        return False, _import_error
    if torch.cuda.is_available() or _interpreting():
        return True, "ok"
    return False, "no CUDA device (set TRITON_INTERPRET=1 to interpret the kernels on the CPU)"


def supports(device: torch.device) -> bool:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and not _interpreting()
    return device.type == "cpu" and _interpreting()


def _pack(weights, biases, config: QNetConfig):
    from .qnet_pack import packed

    return packed(weights, biases, config, pad=1)


def score_dense(weights, biases, config, vectors, out=None):
    from ..kernels.qnet_dense import score_dense as kernel

    Q, n = weights[0].shape[0], vectors.shape[0]
    if out is None:
        out = torch.empty(Q, n, dtype=torch.float32, device=vectors.device)
    if n == 0:
        return out
    return kernel(_pack(weights, biases, config), config, vectors, out)


def score_gather(weights, biases, config, vectors, ids, out=None):
    from ..kernels.qnet_gather import score_gather as kernel

    if out is None:
        out = torch.empty(ids.shape, dtype=torch.float32, device=vectors.device)
    if ids.numel() == 0:
        return out
    return kernel(_pack(weights, biases, config), config, vectors, ids, out)


# Documents per launch of the fused top-k scan: bounds the candidate buffer
# (Q x chunk/BN x min(k, BN) int64) whatever the corpus size.
DEFAULT_TOPK_CHUNK = 1 << 21


def exact_topk(weights, biases, config, vectors, k, block_size=None):
    """Fused scan with per-tile top-k; returns ``(scores (Q, k) f32, ids (Q, k) int64)``
    best first, ties to the lower index, (-inf, -1) padding when k > n."""
    from . import topk_keys
    from ..kernels.qnet_dense import dense_topk_candidates

    if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
        raise ValueError(f"k must be a positive int, got {k!r}")
    chunk = int(block_size or DEFAULT_TOPK_CHUNK)
    if chunk <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    # Small blocks would make a launch per block: the scan takes at least 64K rows a launch.
    chunk = max(chunk, 1 << 16)
    p = _pack(weights, biases, config)
    n = vectors.shape[0]
    running = None
    for s in range(0, n, chunk):
        cands = dense_topk_candidates(p, config, vectors[s : s + chunk], k, base=s)
        running = topk_keys.merge_topk(running, cands, k)
    if running is None:
        running = torch.empty((weights[0].shape[0], 0), dtype=torch.int64, device=vectors.device)
    return topk_keys.finish(running, k)
