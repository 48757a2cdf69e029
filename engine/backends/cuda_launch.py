"""Torch-side launcher of the CUDA C++ kernels (engine.cuda_src): packs the q-nets with 16-wide
padding, picks the tile height that fits the device's shared memory, and calls the
compiled extension on torch's current stream. Needs torch only (no Triton)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import topk_keys
from .qnet_pack import PackedQNet, packed

_PAD = 16
# Documents per launch of the fused top-k scan; bounds the candidate buffer.
DEFAULT_TOPK_CHUNK = 1 << 21


@dataclass
class Prepared:
    ext: object
    p: PackedQNet
    config: object
    block_rows: int
    max_width_pad: int


def prepare(ext, weights, biases, config, vectors) -> Prepared:
    p = packed(weights, biases, config, pad=_PAD)
    width = max(p.max_width, (vectors.shape[1] + _PAD - 1) // _PAD * _PAD)
    dev = vectors.device.index if vectors.device.index is not None else torch.cuda.current_device()
    bn = ext.choose_block_rows(p.w.dtype == torch.bfloat16, width, dev)
    if bn == 0:
        raise ValueError(f"a q-net {width} wide does not fit the CUDA kernel's shared-memory tiles")
    return Prepared(ext, p, config, bn, width)


def _vectors(pr: Prepared, vectors, scales=None):
    """Unit-stride vectors as the kernels read them: compressed ones (``scales`` given)
    as stored, others in the weights' dtype."""
    if scales is None and vectors.dtype != pr.p.w.dtype:  # mixed dtypes: the kernels read one
        vectors = vectors.to(pr.p.w.dtype)
    return vectors if vectors.stride(1) == 1 else vectors.contiguous()


def _run(pr: Prepared, mode, vectors, ids, out, cand, kblk, base, scales=None):
    flags = pr.config.kernel_flags()  # each layer's residual and norms are in the meta rows
    empty = torch.empty(0, 1, device=vectors.device)
    pr.ext.run(
        mode, vectors, scales if scales is not None else empty[:, 0],
        ids if ids is not None else empty.long(), pr.p.w, pr.p.b,
        [list(r) for r in pr.p.meta_rows], flags["relu"], flags["eps"],
        pr.max_width_pad, out if out is not None else empty, cand if cand is not None else empty.long(),
        kblk, base, pr.block_rows, torch.cuda.current_stream(vectors.device).cuda_stream,
    )


def run_dense(pr: Prepared, vectors, out=None, scales=None):
    """(Q, n) float32 scores; ``scales``: float32 (n,) of int8/float8_e4m3fn vectors
    (checked by engine.backends.doc_scales)."""
    vectors = _vectors(pr, vectors, scales)
    Q, n = pr.p.w.shape[0], vectors.shape[0]
    target = out
    if out is None or out.stride(1) != 1:
        target = torch.empty((Q, n), dtype=torch.float32, device=vectors.device)
    if n:
        _run(pr, 0, vectors, None, target, None, 1, 0, scales)
    if out is not None and target is not out:
        out.copy_(target)
        return out
    return target


def run_gather(pr: Prepared, vectors, ids, out=None, scales=None):
    vectors = _vectors(pr, vectors, scales)
    ids = ids.to(torch.int64)
    ids = ids if ids.stride(1) == 1 else ids.contiguous()
    target = out
    if out is None or out.stride(1) != 1:
        target = torch.empty(ids.shape, dtype=torch.float32, device=vectors.device)
    if ids.numel():
        _run(pr, 1, vectors, ids, target, None, 1, 0, scales)
    if out is not None and target is not out:
        out.copy_(target)
        return out
    return target


def run_topk(pr: Prepared, vectors, k: int, block_size=None, scales=None):
    vectors = _vectors(pr, vectors, scales)
    Q, n = pr.p.w.shape[0], vectors.shape[0]
    if n > topk_keys.MAX_IDS:
        raise ValueError(f"the fused top-k packs ids into 32 bits; {n} documents is too many")
    chunk = max(int(block_size or DEFAULT_TOPK_CHUNK), 1 << 16)
    bn = pr.block_rows
    kblk = min(k, bn)
    running = None
    for s in range(0, n, chunk):
        part = vectors[s : s + chunk]
        nblocks = (part.shape[0] + bn - 1) // bn
        cand = torch.full((Q, nblocks * kblk), topk_keys.PAD_KEY, dtype=torch.int64, device=vectors.device)
        _run(pr, 2, part, None, None, cand, kblk, s, None if scales is None else scales[s : s + chunk])
        running = topk_keys.merge_topk(running, cand, k)
    if running is None:
        running = torch.empty((Q, 0), dtype=torch.int64, device=vectors.device)
    return topk_keys.finish(running, k)
