"""Dense fused q-net scoring: every query against every document, optionally keeping only
each tile's best candidates (the fused top-k of the exact scan).

The grid is persistent: program ``p`` scores tiles ``p, p + P, ...`` of the (query,
document block) space, query-major, so the programs running at one time share a query
and its weights stay in L2 while the documents stream.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launch
from .qnet_tile import qnet_tile
from ..backends.topk_keys import MAX_IDS, PAD_KEY


@triton.jit
def _score_keys(score, ids, valid):
    """int64 keys of engine.backends.topk_keys: order-preserving score bits high, ~id low."""
    bits = (score + 0.0).to(tl.int32, bitcast=True)  # + 0.0 folds -0.0 onto +0.0
    key32 = tl.where(bits < 0, ~bits, bits | (-2147483648))
    hi = (key32.to(tl.int64) & 0xFFFFFFFF) - 2147483648
    key = (hi << 32) | (4294967295 - ids)
    return tl.where(valid, key, -9223372036854775807 - 1)  # PAD_KEY, kept in int64 range


@triton.autotune(configs=launch.autotune_configs(), key=["d", "ld_s", "L", "BN", "TOPK"])
@triton.jit
def _dense_kernel(
    vec_ptr, stride_v, n, d, base,
    w_ptr, stride_wq, b_ptr, stride_bq, meta_ptr, L,
    xs_ptr, ys_ptr, ld_s, eps,
    out_ptr, stride_oq, stride_on,
    Q, nblocks,
    BN: tl.constexpr, BK: tl.constexpr, BH: tl.constexpr,
    ACT_RELU: tl.constexpr, LAYER_NORM: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
    TOPK: tl.constexpr, KBLK: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    xs = xs_ptr + pid.to(tl.int64) * BN * ld_s
    ys = ys_ptr + pid.to(tl.int64) * BN * ld_s
    r = tl.arange(0, BN)
    for t in range(pid, Q * nblocks, nprog):
        q = t // nblocks
        blk = t % nblocks
        rows = blk.to(tl.int64) * BN + r
        ok = rows < n
        s = qnet_tile(rows, ok, vec_ptr, stride_v, d,
                      w_ptr + q.to(tl.int64) * stride_wq, b_ptr + q.to(tl.int64) * stride_bq,
                      meta_ptr, L, xs, ys, ld_s, eps,
                      BN, BK, BH, ACT_RELU, LAYER_NORM, IEEE, UPCAST)
        if TOPK:
            # Sort the tile's keys, best first, and keep the first KBLK: k candidates per
            # tile leave the kernel instead of BN scores.
            keys = tl.sort(_score_keys(s, base + rows, ok), 0, descending=True)
            dst = out_ptr + q.to(tl.int64) * stride_oq + (blk.to(tl.int64) * KBLK + r) * stride_on
            tl.store(dst, keys, mask=r < KBLK)
        else:
            tl.store(out_ptr + q.to(tl.int64) * stride_oq + rows * stride_on, s, mask=ok)


def _launch(packed, config, vectors, out, base, topk_k):
    n = vectors.shape[0]
    pl = launch.plan(packed, config, vectors, n)
    kblk = min(topk_k, pl.bn) if topk_k else 1
    _dense_kernel[(pl.programs,)](
        pl.vectors, pl.vectors.stride(0), n, pl.vectors.shape[1], base,
        packed.w, packed.w.stride(0), packed.b, packed.b.stride(0), packed.meta, packed.num_layers,
        pl.xs, pl.ys, pl.width, pl.eps,
        out, out.stride(0), out.stride(1),
        packed.w.shape[0], pl.nblocks,
        BN=pl.bn, TOPK=bool(topk_k), KBLK=kblk, **pl.flags,
    )
    return out


def score_dense(packed, config, vectors, out):
    """Fill ``out`` (Q, n) float32 with every q-net's score of every row of ``vectors``."""
    return _launch(packed, config, vectors, out, 0, 0)


def dense_topk_candidates(packed, config, vectors, k: int, base: int = 0) -> torch.Tensor:
    """(Q, nblocks * min(k, BN)) int64 keys: each tile's best ``min(k, BN)`` documents
    (ids offset by ``base``), unsorted across tiles; merge with engine.backends.topk_keys."""
    n = vectors.shape[0]
    if base + n > MAX_IDS:
        raise ValueError(f"the fused top-k packs ids into 32 bits; {base + n} documents is too many")
    bn = launch.block_n(vectors.device)
    kblk = min(k, bn)
    nblocks = triton.cdiv(n, bn)
    out = torch.full((packed.w.shape[0], nblocks * kblk), PAD_KEY, dtype=torch.int64,
                     device=vectors.device)
    return _launch(packed, config, vectors, out, base, k)
