"""Gather fused q-net scoring: query ``q`` scores the rows ``ids[q]`` of the corpus (the
candidate sets of a graph search). Same persistent grid and tile as the dense scan; only
the row addresses come from ``ids``."""

from __future__ import annotations

import triton
import triton.language as tl

from . import launch
from .qnet_tile import qnet_tile


@triton.autotune(configs=launch.autotune_configs(), key=["d", "ld_s", "L", "BN", "SCALED", "FP8"])
@triton.jit
def _gather_kernel(
    vec_ptr, stride_v, d, sc_ptr,
    ids_ptr, stride_iq, stride_im, m,
    w_ptr, stride_wq, b_ptr, stride_bq, meta_ptr, L,
    xs_ptr, ys_ptr, ld_s, eps,
    out_ptr, stride_oq, stride_om,
    Q, nblocks,
    BN: tl.constexpr, BK: tl.constexpr, BH: tl.constexpr,
    ACT_RELU: tl.constexpr, LAYER_NORM: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
    SCALED: tl.constexpr, FP8: tl.constexpr,  # compressed rows: int8, or e4m3 bytes with FP8
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
        s = qnet_tile(rows, ok, vec_ptr, stride_v, d, sc_ptr,
                      w_ptr + q.to(tl.int64) * stride_wq, b_ptr + q.to(tl.int64) * stride_bq,
                      meta_ptr, L, xs, ys, ld_s, eps,
                      BN, BK, BH, ACT_RELU, LAYER_NORM, IEEE, UPCAST, SCALED, FP8)
        tl.store(out_ptr + q.to(tl.int64) * stride_oq + j * stride_om, s, mask=ok)


def _kernel_args(packed, config, vectors, ids, out, scales=None):
    """``(grid, arguments)`` of one launch of ``_gather_kernel``."""
    m = ids.shape[1]
    pl = launch.plan(packed, config, vectors, m, scales)
    return (pl.programs,), dict(
        vec_ptr=pl.vectors, stride_v=pl.vectors.stride(0), sc_ptr=pl.scales, d=pl.vectors.shape[1],
        ids_ptr=ids, stride_iq=ids.stride(0), stride_im=ids.stride(1), m=m,
        w_ptr=packed.w, stride_wq=packed.w.stride(0), b_ptr=packed.b, stride_bq=packed.b.stride(0),
        meta_ptr=packed.meta, L=packed.num_layers,
        xs_ptr=pl.xs, ys_ptr=pl.ys, ld_s=pl.width, eps=pl.eps,
        out_ptr=out, stride_oq=out.stride(0), stride_om=out.stride(1),
        Q=packed.w.shape[0], nblocks=pl.nblocks,
        BN=pl.bn, **pl.flags,
    )


def score_gather(packed, config, vectors, ids, out, scales=None):
    """Fill ``out`` (Q, m) float32: ``out[q, j]`` scores row ``ids[q, j]`` (int8/float8_e4m3fn
    rows with their float32 ``scales`` (n,): row ``i``'s scale is ``scales[i]``)."""
    grid, args = _kernel_args(packed, config, vectors, ids, out, scales)
    _gather_kernel[grid](**args)
    return out


def aot_variants():
    """The launches CI compiles ahead of time (engine.kernels.aot): every shipped block
    shape with the published flags in bf16 and int64 ids, and each other flag value once."""
    import torch

    from ..qnet_config import QNetConfig
    from .aot import Variant, compressed, example_inputs

    out = []
    cases = (
        ("bf16", torch.bfloat16, torch.int64, QNetConfig(), launch.TILE_CONFIGS, None),
        ("fp16 int32 ids", torch.float16, torch.int32, QNetConfig(), launch.TILE_CONFIGS[:1], None),
        ("fp32 ieee", torch.float32, torch.int64, QNetConfig(), launch.TILE_CONFIGS[:1], None),
        ("bf16 identity no-norm", torch.bfloat16, torch.int64,
         QNetConfig(activation="identity", layer_norm=False), launch.TILE_CONFIGS[:1], None),
        ("bf16 int8 documents", torch.bfloat16, torch.int64, QNetConfig(), launch.TILE_CONFIGS[:1], torch.int8),
        ("bf16 fp8 documents", torch.bfloat16, torch.int64, QNetConfig(), launch.TILE_CONFIGS[:1],
         torch.float8_e4m3fn),
    )
    for label, dtype, id_dtype, config, configs, doc_dtype in cases:
        packed, config, vectors = example_inputs(dtype, config)
        scales = None
        if doc_dtype is not None:
            vectors, scales = compressed(vectors, doc_dtype)
        ids = torch.zeros(2, 300, dtype=id_dtype)
        _, args = _kernel_args(packed, config, vectors, ids, torch.empty(2, 300), scales)
        args["BN"] = launch.GPU_BLOCK_N
        out.append(Variant(_gather_kernel, args, list(configs), label))
    return out
