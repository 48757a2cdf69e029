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

from ..backends.topk_keys import MAX_IDS, PAD_KEY
from . import launch
from .qnet_tile import qnet_tile


@triton.jit
def _score_keys(score, ids, valid):
    """int64 keys of engine.backends.topk_keys: order-preserving score bits high, ~id low."""
    bits = (score + 0.0).to(tl.int32, bitcast=True)  # + 0.0 folds -0.0 onto +0.0
    key32 = tl.where(bits < 0, ~bits, bits | (-2147483648))
    hi = (key32.to(tl.int64) & 0xFFFFFFFF) - 2147483648
    key = (hi << 32) | (4294967295 - ids)
    return tl.where(valid, key, -9223372036854775807 - 1)  # PAD_KEY, kept in int64 range


@triton.autotune(configs=launch.autotune_configs(), key=["d", "ld_s", "L", "BN", "TOPK", "SCALED", "FP8"])
@triton.jit
def _dense_kernel(
    vec_ptr, stride_v, n, d, base, sc_ptr,
    w_ptr, stride_wq, b_ptr, stride_bq, meta_ptr, L,
    xs_ptr, ys_ptr, ld_s, eps,
    out_ptr, stride_oq, stride_on,
    Q, nblocks,
    BN: tl.constexpr, BK: tl.constexpr, BH: tl.constexpr,
    ACT_RELU: tl.constexpr, LAYER_NORM: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
    SCALED: tl.constexpr, FP8: tl.constexpr,  # compressed rows: int8, or e4m3 bytes with FP8
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
        s = qnet_tile(rows, ok, vec_ptr, stride_v, d, sc_ptr,
                      w_ptr + q.to(tl.int64) * stride_wq, b_ptr + q.to(tl.int64) * stride_bq,
                      meta_ptr, L, xs, ys, ld_s, eps,
                      BN, BK, BH, ACT_RELU, LAYER_NORM, IEEE, UPCAST, SCALED, FP8)
        if TOPK:
            # Sort the tile's keys, best first, and keep the first KBLK: k candidates per
            # tile leave the kernel instead of BN scores.
            keys = tl.sort(_score_keys(s, base + rows, ok), 0, descending=True)
            dst = out_ptr + q.to(tl.int64) * stride_oq + (blk.to(tl.int64) * KBLK + r) * stride_on
            tl.store(dst, keys, mask=r < KBLK)
        else:
            tl.store(out_ptr + q.to(tl.int64) * stride_oq + rows * stride_on, s, mask=ok)


def _kernel_args(packed, config, vectors, out, base, topk_k, scales=None):
    """``(grid, arguments)`` of one launch of ``_dense_kernel``."""
    n = vectors.shape[0]
    pl = launch.plan(packed, config, vectors, n, scales)
    kblk = min(topk_k, pl.bn) if topk_k else 1
    return (pl.programs,), dict(
        vec_ptr=pl.vectors, stride_v=pl.vectors.stride(0), sc_ptr=pl.scales, n=n, d=pl.vectors.shape[1], base=base,
        w_ptr=packed.w, stride_wq=packed.w.stride(0), b_ptr=packed.b, stride_bq=packed.b.stride(0),
        meta_ptr=packed.meta, L=packed.num_layers,
        xs_ptr=pl.xs, ys_ptr=pl.ys, ld_s=pl.width, eps=pl.eps,
        out_ptr=out, stride_oq=out.stride(0), stride_on=out.stride(1),
        Q=packed.w.shape[0], nblocks=pl.nblocks,
        BN=pl.bn, TOPK=bool(topk_k), KBLK=kblk, **pl.flags,
    )


def _launch(packed, config, vectors, out, base, topk_k, scales=None):
    grid, args = _kernel_args(packed, config, vectors, out, base, topk_k, scales)
    _dense_kernel[grid](**args)
    return out


def score_dense(packed, config, vectors, out, scales=None):
    """Fill ``out`` (Q, n) float32 with every q-net's score of every row of ``vectors``
    (int8/float8_e4m3fn rows with their float32 ``scales`` (n,))."""
    return _launch(packed, config, vectors, out, 0, 0, scales)


def _candidates(packed, vectors, k: int) -> torch.Tensor:
    bn = launch.block_n(vectors.device)
    nblocks = triton.cdiv(vectors.shape[0], bn)
    return torch.full((packed.w.shape[0], nblocks * min(k, bn)), PAD_KEY, dtype=torch.int64,
                      device=vectors.device)


def dense_topk_candidates(packed, config, vectors, k: int, base: int = 0, scales=None) -> torch.Tensor:
    """(Q, nblocks * min(k, BN)) int64 keys: each tile's best ``min(k, BN)`` documents
    (ids offset by ``base``), unsorted across tiles; merge with engine.backends.topk_keys."""
    n = vectors.shape[0]
    if base + n > MAX_IDS:
        raise ValueError(f"the fused top-k packs ids into 32 bits; {base + n} documents is too many")
    return _launch(packed, config, vectors, _candidates(packed, vectors, k), base, k, scales)


def aot_variants():
    """The launches CI compiles ahead of time (engine.kernels.aot): every shipped block
    shape with the published flags in bf16, and each other flag value once."""
    from ..qnet_config import QNetConfig
    from .aot import Variant, compressed, example_inputs

    out = []
    i8, f8 = torch.int8, torch.float8_e4m3fn
    cases = (
        ("bf16", torch.bfloat16, QNetConfig(), 0, launch.TILE_CONFIGS, None),
        ("fp16", torch.float16, QNetConfig(), 0, launch.TILE_CONFIGS[:1], None),
        ("fp32 ieee", torch.float32, QNetConfig(), 0, launch.TILE_CONFIGS[:1], None),
        ("bf16 identity no-norm", torch.bfloat16, QNetConfig(activation="identity", layer_norm=False), 0,
         launch.TILE_CONFIGS[:1], None),
        ("bf16 top-k", torch.bfloat16, QNetConfig(), 1000, launch.TILE_CONFIGS[:1], None),
        ("bf16 int8 documents", torch.bfloat16, QNetConfig(), 0, launch.TILE_CONFIGS[:1], i8),
        ("bf16 fp8 documents", torch.bfloat16, QNetConfig(), 0, launch.TILE_CONFIGS[:1], f8),
        ("bf16 int8 documents top-k", torch.bfloat16, QNetConfig(), 1000, launch.TILE_CONFIGS[:1], i8),
        ("bf16 fp8 documents top-k", torch.bfloat16, QNetConfig(), 1000, launch.TILE_CONFIGS[:1], f8),
        ("fp32 ieee fp8 documents", torch.float32, QNetConfig(), 0, launch.TILE_CONFIGS[:1], f8),
    )
    for label, dtype, config, k, configs, doc_dtype in cases:
        packed, config, vectors = example_inputs(dtype, config)
        scales = None
        if doc_dtype is not None:
            vectors, scales = compressed(vectors, doc_dtype)
        res = _candidates(packed, vectors, k) if k else torch.empty(2, vectors.shape[0])
        _, args = _kernel_args(packed, config, vectors, res, 0, k, scales)
        args["BN"] = launch.GPU_BLOCK_N
        args["KBLK"] = min(k, launch.GPU_BLOCK_N) if k else 1
        out.append(Variant(_dense_kernel, args, list(configs), label))
    return out
