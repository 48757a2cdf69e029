"""Gather fused q-net scoring: query ``q`` scores the rows ``ids[q]`` of the corpus (the
candidate sets of a graph search). Same persistent grid and tile as the dense scan; only
the row addresses come from ``ids``."""

from __future__ import annotations

import triton
import triton.language as tl

from . import launch
from .qnet_tile import qnet_tile


@triton.autotune(configs=launch.autotune_configs(), key=["d", "ld_s", "L", "BN"])
@triton.jit
def _gather_kernel(
    vec_ptr, stride_v, d,
    ids_ptr, stride_iq, stride_im, m,
    w_ptr, stride_wq, b_ptr, stride_bq, meta_ptr, L,
    xs_ptr, ys_ptr, ld_s, eps,
    out_ptr, stride_oq, stride_om,
    Q, nblocks,
    BN: tl.constexpr, BK: tl.constexpr, BH: tl.constexpr,
    ACT_RELU: tl.constexpr, LAYER_NORM: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    xs = xs_ptr + pid.to(tl.int64) * BN * ld_s
    ys = ys_ptr + pid.to(tl.int64) * BN * ld_s
    r = tl.arange(0, BN)
    for t in range(pid, Q * nblocks, nprog):
        q = t // nblocks
        blk = t % nblocks
        j = blk.to(tl.int64) * BN + r
        ok = j < m
        rows = tl.load(ids_ptr + q.to(tl.int64) * stride_iq + j * stride_im, mask=ok, other=0).to(tl.int64)
        s = qnet_tile(rows, ok, vec_ptr, stride_v, d,
                      w_ptr + q.to(tl.int64) * stride_wq, b_ptr + q.to(tl.int64) * stride_bq,
                      meta_ptr, L, xs, ys, ld_s, eps,
                      BN, BK, BH, ACT_RELU, LAYER_NORM, IEEE, UPCAST)
        tl.store(out_ptr + q.to(tl.int64) * stride_oq + j * stride_om, s, mask=ok)


def score_gather(packed, config, vectors, ids, out):
    """Fill ``out`` (Q, m) float32: ``out[q, j]`` scores row ``ids[q, j]``."""
    m = ids.shape[1]
    pl = launch.plan(packed, config, vectors, m)
    _gather_kernel[(pl.programs,)](
        pl.vectors, pl.vectors.stride(0), pl.vectors.shape[1],
        ids, ids.stride(0), ids.stride(1), m,
        packed.w, packed.w.stride(0), packed.b, packed.b.stride(0), packed.meta, packed.num_layers,
        pl.xs, pl.ys, pl.width, pl.eps,
        out, out.stride(0), out.stride(1),
        packed.w.shape[0], pl.nblocks,
        BN=pl.bn, **pl.flags,
    )
    return out
