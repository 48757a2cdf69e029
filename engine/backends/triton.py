"""Triton backend: the q-net kernels of ``engine.kernels`` (the repository's ``kernels/``).

Two dense paths: the fused small-tile kernel (``qnet_dense``: a whole q-net per tile of
64 documents, best for small calls) and the layer-by-layer large-tile GEMMs
(``qnet_layers``: the path for scans of many documents). ``HYPENCODER_TRITON_DENSE``
chooses: ``tile``, ``layers``, or ``auto`` (the default: ``layers`` from
``LAYERS_MIN_ROWS`` documents on). Gathers always use the fused small-tile kernel.

Compressed documents: int8 or float8_e4m3fn ``vectors`` with ``scales=`` float32 (n,)
(engine.backends.doc_scales); the kernels read the stored bytes and scale each row's
first-layer accumulator in registers.

Runs on CUDA tensors; under ``TRITON_INTERPRET=1`` Triton interprets the same kernels on
the CPU, which is how CI checks them without a GPU (slowly: tests only).
"""

from __future__ import annotations

import os

import torch

from ..qnet_config import QNetConfig
from .doc_scales import check_scales

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


# Dense calls of at least this many documents take the layer-by-layer path.
LAYERS_MIN_ROWS = 1 << 15
DENSE_PATHS = ("auto", "tile", "layers")


def dense_path(n: int) -> str:
    """``"tile"`` or ``"layers"``: the dense path for a call over ``n`` documents."""
    path = os.environ.get("HYPENCODER_TRITON_DENSE", "auto").strip() or "auto"
    if path not in DENSE_PATHS:
        raise ValueError(f"HYPENCODER_TRITON_DENSE must be one of {DENSE_PATHS}, got {path!r}")
    if path == "auto":
        return "layers" if n >= LAYERS_MIN_ROWS else "tile"
    return path


def _pack(weights, biases, config: QNetConfig):
    from .qnet_pack import packed

    return packed(weights, biases, config, pad=1)


def score_dense(weights, biases, config, vectors, out=None, *, scales=None):
    """``(Q, n)`` float32 scores (engine.backends.protocol); ``scales`` float32 (n,) is
    required for int8/float8_e4m3fn ``vectors`` and refused otherwise (ValueError)."""
    scales = check_scales(vectors, scales)
    return _score_dense(weights, biases, config, vectors, out, scales)


def _score_dense(weights, biases, config, vectors, out, scales):
    Q, n = weights[0].shape[0], vectors.shape[0]
    if out is None:
        out = torch.empty(Q, n, dtype=torch.float32, device=vectors.device)
    if n == 0:
        return out
    if dense_path(n) == "layers":
        from ..kernels.qnet_layers import score_dense as layers

        return layers(weights, biases, config, vectors, out, scales)
    from ..kernels.qnet_dense import score_dense as kernel

    return kernel(_pack(weights, biases, config), config, vectors, out, scales)


def score_gather(weights, biases, config, vectors, ids, out=None, *, scales=None):
    """``(Q, m)`` float32: ``out[q, j]`` scores row ``ids[q, j]``; ``scales`` as for
    :func:`score_dense` (row ``i``'s scale is ``scales[i]``)."""
    from ..kernels.qnet_gather import score_gather as kernel

    scales = check_scales(vectors, scales)
    if out is None:
        out = torch.empty(ids.shape, dtype=torch.float32, device=vectors.device)
    if ids.numel() == 0:
        return out
    return kernel(_pack(weights, biases, config), config, vectors, ids, out, scales)


# Documents per launch of the fused top-k scan: bounds the candidate buffer
# (Q x chunk/BN x min(k, BN) int64) whatever the corpus size.
DEFAULT_TOPK_CHUNK = 1 << 21
# Scores per block of the layer-by-layer scan before each top-k merge (Q x block float32),
# and the fewest documents a block takes (fewer would be a launch sequence per block).
_LAYERS_TOPK_SCORES = 1 << 22
_MIN_BLOCK = 1 << 16


def exact_topk(weights, biases, config, vectors, k, block_size=None, *, scales=None):
    """Fused scan with per-tile top-k; returns ``(scores (Q, k) f32, ids (Q, k) int64)``
    best first, ties to the lower index, (-inf, -1) padding when k > n. ``scales`` as for
    :func:`score_dense`."""
    from . import topk_keys
    from ..kernels.qnet_dense import dense_topk_candidates

    if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
        raise ValueError(f"k must be a positive int, got {k!r}")
    scales = check_scales(vectors, scales)
    chunk = int(block_size or DEFAULT_TOPK_CHUNK)
    if chunk <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    Q, n = weights[0].shape[0], vectors.shape[0]
    if n > topk_keys.MAX_IDS:
        raise ValueError(f"the fused top-k packs ids into 32 bits; {n} documents is too many")
    running = None
    if dense_path(n) == "layers":
        # Whole blocks of scores, then one top-k merge per block: the GEMM path has no
        # per-tile top-k, and a few large merges cost little next to the scan.
        block = max(chunk, _MIN_BLOCK, _LAYERS_TOPK_SCORES // Q)
        out = torch.empty(Q, min(block, n), dtype=torch.float32, device=vectors.device)
        for s in range(0, n, block):
            part = vectors[s : s + block]
            part_scales = None if scales is None else scales[s : s + block]
            sc = _score_dense(weights, biases, config, part, out[:, : part.shape[0]], part_scales)
            ids = torch.arange(s, s + part.shape[0], device=vectors.device).expand(Q, -1)
            running = topk_keys.merge_topk(running, topk_keys.encode(sc, ids), k)
        return topk_keys.finish(_empty_if_none(running, Q, vectors.device), k)
    chunk = max(chunk, _MIN_BLOCK)
    p = _pack(weights, biases, config)
    for s in range(0, n, chunk):
        cands = dense_topk_candidates(p, config, vectors[s : s + chunk], k, base=s,
                                      scales=None if scales is None else scales[s : s + chunk])
        running = topk_keys.merge_topk(running, cands, k)
    return topk_keys.finish(_empty_if_none(running, Q, vectors.device), k)


def _empty_if_none(running, Q: int, device):
    return running if running is not None else torch.empty((Q, 0), dtype=torch.int64, device=device)
