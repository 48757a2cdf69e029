"""Dense q-net scoring as one large-tile GEMM per layer: the path meant to reach the
tensor cores' limit on big corpora.

Why another dense path. The fused small-tile kernel (``qnet_tile``) runs a whole q-net on
64 documents in one program, which keeps activations on chip but makes every layer a
64-row matrix product that reads the 768 x 768 weights once per 64 documents and pays
scratch round trips between slices; it suits gathers of a few hundred ids, where per-call
latency rules, not a scan of millions of documents. A 6-layer 768-wide q-net is 7.08
MFLOP per document, 62.6 TFLOP per query over 8.8M documents: compute-bound (reading
the corpus is ~3 ms on an H200), so a scan should be a sequence of large GEMMs.

The design, per chunk of ``C`` documents (``C`` sized so two activation buffers of
``Q x C x width`` in the compute dtype fit a 24 MB share of L2, 8192 rows for Q = 1,
d = 768, bf16), per hidden layer:

1. ``_layer_gemm``: ``P = act(X W + b)`` (``+ X`` when the residual precedes the norm)
   with 128 x (128-256) x 64 ``tl.dot`` tiles, several pipeline stages and, on sm_90
   with a Triton that has host tensor descriptors, TMA loads of the X and W tiles. The
   epilogue fuses the bias, the activation, the residual and the layer norm's row
   statistics: per 64-column group of its tile, the group's mean and sum of squared
   deviations (exact two-pass over values in registers, in float32, before rounding
   ``P`` to the compute dtype), so no atomics and the result is deterministic.
2. ``_layer_norm``: a light pass over the chunk, one program per 32 rows, that merges
   the groups' statistics (Chan's formula: the same mean and variance as a two-pass over
   the row), normalises, adds the residual, and writes the next layer's input in the
   compute dtype in place, or, after the last hidden layer, takes the dot with the output
   weights and writes the scores. A layer with neither norm nor late residual skips it
   (its ``P`` is the next input).

On a GPU a scan of many documents is replayed from a CUDA graph captured at its first
call on a corpus: one launch instead of ~13,000 (8.8M documents, Q = 1), each of which
would cost the host about as long as the GPU spends on it.

Between layers the activations stay in bf16 (fp16; fp32 for float32 q-nets, computed
with IEEE dots in smaller tiles) in the two chunk buffers; nothing of size
``Q x n x width`` exists.

Estimate (H200: 989 TFLOP/s dense bf16 by the datasheet, ~790 measured by cuBLAS on
large GEMMs; L2 ~10 TB/s, HBM 4.8 TB/s), per document and layer (1.18 MFLOP): the GEMM
at 70-75% of the measured peak, as Triton's TMA GEMMs reach on 8192 x 768 x 768 (12
k-steps of 64: pipeline fill and the epilogue are not overlapped), is ~2.05 ns; the light
pass moves ~4.6 KB through L2 (read P and X, write X), ~0.5 ns. About 2.55 ns per
document-layer: 61% of the measured peak, ~135 ms for the 8.8M x 6-layer query, against
the fused WMMA kernel's 17-24% (~400 ms) and bf16 cuBLAS per layer with separate
epilogue kernels (~250-300 TFLOP/s, ~230 ms). The gap to the 120 ms target is the light
pass and the un-overlapped epilogue.

A warp-specialised wgmma kernel in CUDA C++ (producer warp issuing TMA, two consumer
warpgroups ping-ponging so one tile's epilogue overlaps the other's MMAs, persistent
over tiles, the normalisation folded into the next GEMM's A-operand path) would be
estimated at ~80% of the measured peak with the light pass gone: ~1.9 ns per
document-layer, ~100 ms per query. That is the one way to the 90 ms goal, but it is
weeks of work that cannot be checked without a GPU; it is worth starting only if the
device run shows this path's GEMM (the first rows of bench/bench_gpu.py's layer table)
below ~65% of the measured bf16 GEMM peak on 8192 x 768 x 768, or the whole scan above
150 ms. Until then the Triton path is the one to measure and tune.
"""

from __future__ import annotations

import collections
import os
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import triton
import triton.language as tl

from . import launch
from .doc_decode import decode_rows
from .qnet_tile import _dot

try:  # host-side TMA descriptors (Triton >= 3.4); absent: pointer loads only
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older Triton
    TensorDescriptor = None

# Width of a statistics group: every GEMM tile width is a multiple of it, so the
# statistics' layout does not depend on which configuration the autotuner picks.
STATS_GROUP = 64
STATS_GROUP_INTERPRETED = 16
# Rows and columns of one light-pass program.
NORM_ROWS, NORM_COLS = 32, 256
NORM_ROWS_INTERPRETED, NORM_COLS_INTERPRETED = 16, 16


def _block_shapes(nargs) -> None:
    """Autotune pre-hook: a TMA descriptor's block is the configuration's tile."""
    bm, bn, bk = nargs["BM"], nargs["BN"], nargs["BK"]
    x, w = nargs["x_src"], nargs["w_src"]
    if TensorDescriptor is not None and isinstance(x, TensorDescriptor):
        x.block_shape = [bm, bk] if len(x.shape) == 2 else [1, bm, bk]
    if TensorDescriptor is not None and isinstance(w, TensorDescriptor):
        w.block_shape = [1, bk, bn]


def _config(bm, bn, bk, warps, stages) -> triton.Config:
    return triton.Config({"BM": bm, "BN": bn, "BK": bk}, num_warps=warps, num_stages=stages,
                         pre_hook=_block_shapes)


# Shipped GEMM tiles, the one used without autotuning first; all are compiled ahead of
# time for sm_80 and sm_90 in CI (engine.kernels.aot), which checks their shared memory.
# Float32 q-nets (IEEE dots, no tensor cores) take smaller tiles: 4-byte operands would
# not fit an A100's shared memory in these.
LAYER_CONFIGS = (
    _config(128, 128, 64, 8, 4),
    _config(128, 256, 64, 8, 3),
    _config(128, 128, 64, 4, 4),
    _config(64, 128, 64, 4, 4),
)
LAYER_CONFIGS_FP32 = (
    _config(64, 64, 32, 4, 3),
    _config(128, 64, 32, 8, 3),
)
LAYER_INTERPRETER_CONFIG = _config(16, 32, 16, 1, 1)
_TUNING_KEY = ["din", "dout", "X_SHARED", "USE_TMA", "X_SCALED", "X_FP8"]


@triton.jit
def _layer_gemm_kernel(
    x_src, x_ptr, stride_xq, stride_xm,  # layer input (Q, C, din), or the documents (C, din)
    w_src, w_ptr, stride_wq, stride_wk,  # weights (Q, din, dout)
    b_ptr, stride_bq,  # biases (Q, dout)
    p_ptr, stride_pq, stride_pm,  # output (Q, C, dout), compute dtype
    st_ptr, stride_sq, stride_sm,  # statistics (Q, C, groups, 2) float32: mean, M2
    xsc_ptr,  # with X_SCALED: float32 (C,) scales of compressed documents X
    C, din, dout,
    SW: tl.constexpr, ACT_RELU: tl.constexpr, RES_FIRST: tl.constexpr, STATS: tl.constexpr,
    X_SHARED: tl.constexpr, USE_TMA: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
    X_SCALED: tl.constexpr, X_FP8: tl.constexpr,  # X: int8 (X_FP8: e4m3 bytes) rows, scaled
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    cdt = p_ptr.dtype.element_ty
    pid = tl.program_id(0)
    q = tl.program_id(1).to(tl.int64)
    tiles_n = tl.cdiv(dout, BN)
    # Column tiles of one row block run next to each other: they share its X tile in L2.
    m0 = (pid // tiles_n) * BM
    n0 = (pid % tiles_n) * BN
    rm = m0 + tl.arange(0, BM)
    rn = n0 + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    row_ok = rm < C
    col_ok = rn < dout
    # x_src and w_src are TMA descriptors with USE_TMA, else the same as x_ptr and w_ptr.
    x_base = x_ptr + q * stride_xq
    w_base = w_ptr + q * stride_wq

    acc = tl.zeros((BM, BN), tl.float32)
    for k0 in range(0, din, BK):
        if USE_TMA:
            if X_SHARED:
                a = x_src.load([m0, k0])
            else:
                a = tl.reshape(x_src.load([q.to(tl.int32), m0, k0]), (BM, BK))
            b = tl.reshape(w_src.load([q.to(tl.int32), k0, n0]), (BK, BN))
        else:
            kk = k0 + rk
            k_ok = kk < din
            a = tl.load(x_base + rm[:, None].to(tl.int64) * stride_xm + kk[None, :],
                        mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(w_base + kk[:, None].to(tl.int64) * stride_wk + rn[None, :],
                        mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        if X_SCALED:  # raw values, exact in the compute dtype; the scale goes on acc
            a = decode_rows(a, X_FP8)
        acc = _dot(a.to(cdt), b.to(cdt), acc, IEEE, UPCAST)

    # Epilogue: bias, activation, the residual when it precedes the norm, statistics.
    bias = tl.load(b_ptr + q * stride_bq + rn, mask=col_ok, other=0.0).to(tl.float32)
    if X_SCALED:
        xsc = tl.load(xsc_ptr + rm, mask=row_ok, other=0.0)
        acc = acc * xsc[:, None]
    y = acc + bias[None, :]
    if ACT_RELU:
        y = tl.maximum(y, 0.0)
    if RES_FIRST:  # din == dout
        xr = tl.load(x_base + rm[:, None].to(tl.int64) * stride_xm + rn[None, :],
                     mask=row_ok[:, None] & col_ok[None, :], other=0)
        if X_SCALED:
            y = y + decode_rows(xr, X_FP8) * xsc[:, None]
        else:
            y = y + xr.to(tl.float32)
    y = tl.where(col_ok[None, :], y, 0.0)
    tl.store(p_ptr + q * stride_pq + rm[:, None].to(tl.int64) * stride_pm + rn[None, :], y.to(cdt),
             mask=row_ok[:, None] & col_ok[None, :])
    if STATS:
        G: tl.constexpr = BN // SW
        g = tl.arange(0, G)
        count = tl.minimum(tl.maximum(dout - (n0 + g * SW), 0), SW).to(tl.float32)  # (G,)
        yg = tl.reshape(y, (BM, G, SW))
        mean = tl.sum(yg, axis=2) / tl.maximum(count, 1.0)[None, :]
        cols3 = tl.reshape(rn, (G, SW))
        dev = tl.where((cols3 < dout)[None, :, :], yg - mean[:, :, None], 0.0)
        m2 = tl.sum(dev * dev, axis=2)
        gi = n0 // SW + g
        dst = st_ptr + q * stride_sq + rm[:, None].to(tl.int64) * stride_sm + gi[None, :] * 2
        ok = row_ok[:, None] & (count > 0)[None, :]
        tl.store(dst, mean, mask=ok)
        tl.store(dst + 1, m2, mask=ok)


_layer_gemm = triton.autotune(configs=launch.autotune_configs(LAYER_CONFIGS, LAYER_INTERPRETER_CONFIG),
                              key=_TUNING_KEY)(_layer_gemm_kernel)
_layer_gemm_fp32 = triton.autotune(configs=launch.autotune_configs(LAYER_CONFIGS_FP32, LAYER_INTERPRETER_CONFIG),
                                   key=_TUNING_KEY)(_layer_gemm_kernel)


@triton.jit
def _layer_norm(
    p_ptr, stride_pq, stride_pm,  # the layer's output (Q, C, h), or the documents (C, h)
    st_ptr, stride_sq, stride_sm, groups,  # its statistics (Q, C, groups, 2)
    r_ptr, stride_rq, stride_rm,  # the layer's input, for the residual
    x_ptr, stride_xq, stride_xm,  # the next layer's input (may be r_ptr: in place)
    wo_ptr, stride_woq,  # output weights (Q, h), after the last hidden layer
    s_ptr, stride_soq, stride_son,  # scores (Q, C) float32, after the last hidden layer
    sc_ptr,  # float32 (C,) scales of compressed documents, when p (P_SCALED) or r (R_SCALED) are them
    C, h, eps,
    SW: tl.constexpr, NORMALISE: tl.constexpr, RES_LAST: tl.constexpr, LAST: tl.constexpr,
    BR: tl.constexpr, BH: tl.constexpr,
    P_SCALED: tl.constexpr, R_SCALED: tl.constexpr, DOC_FP8: tl.constexpr,
):
    q = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    row_ok = rows < C
    rows64 = rows.to(tl.int64)
    mean = tl.zeros((BR,), tl.float32)
    rstd = tl.full((BR,), 1.0, tl.float32)
    if NORMALISE:
        st = st_ptr + q * stride_sq + rows64 * stride_sm
        total = tl.zeros((BR,), tl.float32)
        for g in range(groups):
            cnt = tl.minimum(h - g * SW, SW).to(tl.float32)
            total += cnt * tl.load(st + g * 2, mask=row_ok, other=0.0)
        mean = total / h
        m2 = tl.zeros((BR,), tl.float32)
        for g in range(groups):
            cnt = tl.minimum(h - g * SW, SW).to(tl.float32)
            gm = tl.load(st + g * 2, mask=row_ok, other=0.0)
            m2 += tl.load(st + g * 2 + 1, mask=row_ok, other=0.0) + cnt * (gm - mean) * (gm - mean)
        rstd = 1.0 / tl.sqrt(m2 / h + eps)
    score = tl.zeros((BR,), tl.float32)
    dsc = tl.full((BR,), 1.0, tl.float32)
    if P_SCALED or R_SCALED:
        dsc = tl.load(sc_ptr + rows64, mask=row_ok, other=0.0)
    for c0 in range(0, h, BH):
        cols = c0 + tl.arange(0, BH)
        ok = row_ok[:, None] & (cols < h)[None, :]
        v = tl.load(p_ptr + q * stride_pq + rows64[:, None] * stride_pm + cols[None, :], mask=ok, other=0)
        if P_SCALED:
            v = decode_rows(v, DOC_FP8) * dsc[:, None]
        else:
            v = v.to(tl.float32)
        if NORMALISE:
            v = (v - mean[:, None]) * rstd[:, None]
        if RES_LAST:
            xr = tl.load(r_ptr + q * stride_rq + rows64[:, None] * stride_rm + cols[None, :], mask=ok, other=0)
            if R_SCALED:
                v += decode_rows(xr, DOC_FP8) * dsc[:, None]
            else:
                v += xr.to(tl.float32)
        if LAST:
            wo = tl.load(wo_ptr + q * stride_woq + cols, mask=cols < h, other=0.0).to(tl.float32)
            score += tl.sum(tl.where(ok, v * wo[None, :], 0.0), axis=1)
        else:
            tl.store(x_ptr + q * stride_xq + rows64[:, None] * stride_xm + cols[None, :],
                     v.to(x_ptr.dtype.element_ty), mask=ok)
    if LAST:
        tl.store(s_ptr + q * stride_soq + rows64 * stride_son, score, mask=row_ok)


# ----------------------------------------------------------------------------- host side


def _stats_group() -> int:
    return STATS_GROUP_INTERPRETED if launch.interpreting() else STATS_GROUP


def _norm_block() -> tuple:
    if launch.interpreting():
        return NORM_ROWS_INTERPRETED, NORM_COLS_INTERPRETED
    return NORM_ROWS, NORM_COLS


def chunk_rows(num_queries: int, width: int, elem_bytes: int, n: int) -> int:
    """Documents per chunk: two activation buffers of ``Q x C x width`` fit the L2 share
    ``HYPENCODER_TRITON_CHUNK_MB`` (default 24 MB), at least one 256-row block; 64 rows
    when interpreting (tests then cross chunk boundaries)."""
    if launch.interpreting():
        return min(n, 64)
    budget = int(float(os.environ.get("HYPENCODER_TRITON_CHUNK_MB", "24")) * (1 << 20))
    rows = budget // max(1, 2 * num_queries * width * elem_bytes)
    return min(n, max(256, rows // 256 * 256))


def use_tma(device: torch.device) -> bool:
    """TMA loads: on sm_90+ with a Triton that has host tensor descriptors, unless
    ``HYPENCODER_TRITON_TMA=0``; ``=1`` forces them (the interpreter runs them too)."""
    env = os.environ.get("HYPENCODER_TRITON_TMA", "").strip()
    if TensorDescriptor is None or env == "0":
        return False
    if env == "1":
        return True
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (9, 0)


def _tma_ok(t: torch.Tensor) -> bool:
    e = t.element_size()
    return (t.stride(-1) == 1 and t.data_ptr() % 16 == 0
            and all((s * e) % 16 == 0 for s in t.stride()[:-1]))


def _desc(t: torch.Tensor, block):
    return TensorDescriptor(t, list(t.shape), list(t.stride()), list(block))


_BUFFERS: dict = {}


def _buffers(q: int, rows: int, width: int, groups: int, dtype, device):
    """Two activation buffers (q, rows, width) of ``dtype`` and the statistics
    (q, rows, groups, 2) float32, reused across calls on the device; only grow."""
    key = (device, dtype)
    need = (2 * q * rows * width, q * rows * groups * 2)
    have = _BUFFERS.get(key)
    if have is None or have[0].numel() < need[0] or have[1].numel() < need[1]:
        have = (torch.empty(need[0], dtype=dtype, device=device),
                torch.empty(need[1], dtype=torch.float32, device=device))
        _BUFFERS[key] = have
    act, st = have
    half = q * rows * width
    return (act[:half].view(q, rows, width), act[half: 2 * half].view(q, rows, width),
            st[: need[1]].view(q, rows, groups, 2))


def _gemm_args(x, x_shared, w, b, p, st, rows, flags, ops, tma, doc=None):
    """Arguments of one ``_layer_gemm`` launch (the grid depends on the configuration).
    ``doc``: ``(scales, fp8)`` when ``x`` is compressed documents (e4m3 ones as uint8)."""
    ln_before, res, ln_after = ops
    din, dout = int(w.shape[1]), int(w.shape[2])
    cdt = p.dtype
    xv = x if x_shared else x[:, :rows, :din]
    tma = tma and _tma_ok(w) and _tma_ok(xv)
    # Placeholder blocks: the autotune pre-hook sets the configuration's tile.
    x_src = (_desc(xv, [1, 1] if x_shared else [1, 1, 1]) if tma else x)
    w_src = _desc(w, [1, 1, 1]) if tma else w
    return dict(
        x_src=x_src, x_ptr=x, stride_xq=0 if x_shared else x.stride(0), stride_xm=x.stride(-2),
        w_src=w_src, w_ptr=w, stride_wq=w.stride(0), stride_wk=w.stride(1),
        b_ptr=b, stride_bq=b.stride(0),
        p_ptr=p, stride_pq=p.stride(0), stride_pm=p.stride(1),
        st_ptr=st, stride_sq=st.stride(0), stride_sm=st.stride(1),
        xsc_ptr=doc[0] if doc else st,
        C=rows, din=din, dout=dout,
        SW=_stats_group(), ACT_RELU=flags["relu"], RES_FIRST=res and not ln_before,
        STATS=ln_before or ln_after, X_SHARED=x_shared, USE_TMA=tma,
        IEEE=cdt == torch.float32, UPCAST=launch.interpreting(),
        X_SCALED=doc is not None, X_FP8=bool(doc and doc[1]),
    )


def _norm_args(p, p_shared, st, r, x, wo, scores, rows, h, eps, ops, last, doc=None, p_doc=False, r_doc=False):
    """Arguments and grid of one ``_layer_norm`` launch. ``doc``: ``(scales, fp8)`` of
    compressed documents, which ``p`` is with ``p_doc`` and ``r`` with ``r_doc``."""
    ln_before, res, ln_after = ops
    br, bh = _norm_block()
    dummy = p  # never read: a valid pointer for the arguments a variant ignores
    r = r if r is not None else dummy
    x = x if x is not None else dummy
    wo = wo if wo is not None else dummy
    scores = scores if scores is not None else _no_scores(p.device)
    return dict(
        p_ptr=p, stride_pq=0 if p_shared else p.stride(0), stride_pm=p.stride(-2),
        st_ptr=st, stride_sq=st.stride(0), stride_sm=st.stride(1), groups=triton.cdiv(h, _stats_group()),
        r_ptr=r, stride_rq=0 if r.dim() == 2 else r.stride(0), stride_rm=r.stride(-2),
        x_ptr=x, stride_xq=0 if x.dim() == 2 else x.stride(0), stride_xm=x.stride(-2),
        wo_ptr=wo, stride_woq=wo.stride(0),
        s_ptr=scores, stride_soq=scores.stride(0), stride_son=scores.stride(1),
        sc_ptr=doc[0] if doc else st,
        C=rows, h=h, eps=eps,
        SW=_stats_group(), NORMALISE=ln_before or ln_after, RES_LAST=res and ln_before, LAST=last,
        BR=br, BH=bh,
        P_SCALED=bool(doc and p_doc), R_SCALED=bool(doc and r_doc), DOC_FP8=bool(doc and doc[1]),
    ), (triton.cdiv(rows, br), p.shape[0] if not p_shared else wo.shape[0])


_NO_SCORES: dict = {}


def _no_scores(device) -> torch.Tensor:
    """A float32 (1, 1) stand-in for the scores of a light pass that writes none."""
    t = _NO_SCORES.get(str(device))
    if t is None:
        t = _NO_SCORES[str(device)] = torch.zeros((1, 1), device=device)
    return t


def _gemm_grid(rows, dout, q):
    return lambda meta: (triton.cdiv(rows, meta["BM"]) * triton.cdiv(dout, meta["BN"]), q)


def layer_gemm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, *, relu: bool = True,
               statistics: bool = True, residual_first: bool = False):
    """One hidden layer's GEMM and epilogue alone, as the scan runs it: ``x`` (C, din)
    documents shared by the ``Q`` q-nets of ``w`` (Q, din, dout) and ``b`` (Q, dout), all of
    one dtype. Returns ``(P (Q, C, dout), stats (Q, C, groups, 2) float32)``: ``P =
    act(x W + b)`` (``+ x`` with ``residual_first``) in that dtype, and per group of
    ``STATS_GROUP`` columns its mean and sum of squared deviations (zeros when
    ``statistics`` is off). For tests and for timing the GEMM against cuBLAS."""
    Q, din, dout = (int(s) for s in w.shape)
    rows = int(x.shape[0])
    p = torch.empty(Q, rows, dout, dtype=w.dtype, device=w.device)
    st = torch.zeros(Q, rows, triton.cdiv(dout, _stats_group()), 2, device=w.device)
    ops = (statistics, residual_first, False) if not residual_first else (False, True, statistics)
    flags = {"relu": relu}
    args = _gemm_args(x, True, w, b, p, st, rows, flags, ops, use_tma(x.device))
    gemm = _layer_gemm_fp32 if w.dtype == torch.float32 else _layer_gemm
    gemm[_gemm_grid(rows, dout, Q)](**args)
    return p, st


def score_dense(weights, biases, config, vectors, out, scales=None):
    """Fill ``out`` (Q, n) float32 with every q-net's score of every row of ``vectors``
    (shapes and dtypes as :mod:`engine.backends.protocol` gives them; int8/float8_e4m3fn
    rows with their float32 ``scales`` (n,)), layer by layer.
    On a GPU, scans of ``GRAPH_MIN_ROWS`` documents or more replay a captured CUDA graph
    (see :func:`graphs_enabled`)."""
    global _graph_error
    if vectors.shape[0] >= GRAPH_MIN_ROWS and graphs_enabled(vectors.device):
        try:
            return _replayed(weights, biases, config, vectors, out, scales)
        except Exception as e:  # noqa: BLE001 - any capture failure: scan eagerly from now on
            _graph_error = f"{type(e).__name__}: {e}"
            _GRAPHS.clear()
            warnings.warn(f"capturing the layer scan in a CUDA graph failed ({_graph_error[:300]}); "
                          "launching its kernels one by one instead", RuntimeWarning, stacklevel=2)
    return _scan(weights, biases, config, vectors, out, scales=scales)


def _scan(weights, biases, config, vectors, out, buffers=None, scales=None):
    """The scan, launch by launch: per chunk of documents, each layer's GEMM and light
    pass. ``buffers``: the activation buffers and statistics to use (default: the shared
    ones of :func:`_buffers`). Compressed documents (``scales`` given) are read as stored
    by the first layer's GEMM, which scales its accumulator."""
    L = len(biases)
    Q, n = int(weights[0].shape[0]), int(vectors.shape[0])
    cdt = weights[0].dtype
    flags = config.kernel_flags()
    width = max(int(w.shape[2]) for w in weights[:L]) if L else 1
    groups = triton.cdiv(width, _stats_group())
    rows_max = chunk_rows(Q, width, weights[0].element_size(), n)
    ws = [w if w.stride(-1) == 1 else w.contiguous() for w in weights]
    bs = [b if b.stride(-1) == 1 else b.contiguous() for b in biases]
    wo = ws[L][:, :, 0]
    wo = wo if wo.stride(1) == 1 else wo.contiguous()
    buf_a, buf_b, st = buffers or _buffers(Q, rows_max, width, groups, cdt, vectors.device)
    tma = use_tma(vectors.device)
    for s in range(0, n, rows_max):
        docs = vectors[s : s + rows_max]
        doc = None
        if scales is not None:
            docs, _, doc_flags = launch.doc_operands(docs, scales)
            doc = (scales[s : s + rows_max], doc_flags["FP8"])
        elif docs.dtype != cdt:  # the GEMMs read one dtype
            docs = docs.to(cdt)
        docs = docs if docs.stride(1) == 1 else docs.contiguous()
        rows = docs.shape[0]
        scores = out[:, s : s + rows]
        x, x_shared = docs, True
        if L == 0:
            args, grid = _norm_args(docs, True, st, None, None, wo, scores, rows, int(docs.shape[1]),
                                    flags["eps"], (False, False, False), True, doc, p_doc=True)
            _layer_norm[grid](**args)
            continue
        for layer in range(L):
            ops = config.layer_ops(layer, L)
            dout = int(ws[layer].shape[2])
            p = buf_b if x is buf_a else buf_a
            args = _gemm_args(x, x_shared, ws[layer], bs[layer], p, st, rows, flags, ops, tma,
                              doc if layer == 0 else None)
            gemm = _layer_gemm_fp32 if cdt == torch.float32 else _layer_gemm
            gemm[_gemm_grid(rows, dout, Q)](**args)
            last = layer == L - 1
            ln_before, res, ln_after = ops
            if not (last or ln_before or ln_after or res):
                x, x_shared = p, False  # nothing to apply: the output is the next input
                continue
            nxt = None if last else (x if not x_shared else (buf_b if p is buf_a else buf_a))
            args, grid = _norm_args(p, False, st, x if res else None, nxt, wo if last else None,
                                    scores if last else None, rows, dout, flags["eps"], ops, last,
                                    doc if layer == 0 else None, r_doc=res)
            _layer_norm[grid](**args)
            x, x_shared = nxt, False
    return out


# ------------------------------------------------------------------ CUDA graph replay
# A Q = 1 scan of 8.8M documents is ~13,000 launches of 5-20 us of GPU work each, about
# what Python takes to issue one (the autotuner, the arguments, two TMA descriptors), so
# launched one by one the GPU would wait on the host. The first call on a corpus runs the
# scan (compiling and autotuning), then captures it in a CUDA graph with its own weight,
# output and activation buffers; a later call on the same corpus with q-nets of the same
# shapes copies its weights in and replays the graph: one launch.
GRAPH_MIN_ROWS = 1 << 18
_GRAPH_ENTRIES = 4
_GRAPHS: "collections.OrderedDict[tuple, _Captured]" = collections.OrderedDict()
_graph_error: str | None = None


def graphs_enabled(device: torch.device) -> bool:
    """Graph replay: on CUDA devices unless ``HYPENCODER_TRITON_GRAPHS=0`` or a capture
    has failed in this process (then a warning said why)."""
    return (device.type == "cuda" and _graph_error is None
            and os.environ.get("HYPENCODER_TRITON_GRAPHS", "1").strip() != "0")


@dataclass
class _Captured:
    replay: Callable[[], None]
    weights: list
    biases: list
    out: torch.Tensor
    buffers: tuple


def _capture_cuda_graph(fn) -> Callable[[], None]:
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


_capture = _capture_cuda_graph  # the tests substitute a stand-in: there is no CUDA there


def _replayed(weights, biases, config, vectors, out, scales=None):
    Q, n = int(weights[0].shape[0]), int(vectors.shape[0])
    key = (vectors.data_ptr(), tuple(vectors.shape), tuple(vectors.stride()), vectors.dtype, str(vectors.device),
           tuple(tuple(w.shape) for w in weights), weights[0].dtype, config,
           None if scales is None else scales.data_ptr())
    entry = _GRAPHS.get(key)
    if entry is None:
        L = len(biases)
        cdt = weights[0].dtype
        width = max(int(w.shape[2]) for w in weights[:L]) if L else 1
        rows = chunk_rows(Q, width, weights[0].element_size(), n)
        groups = triton.cdiv(width, _stats_group())
        buffers = (torch.empty(Q, rows, width, dtype=cdt, device=vectors.device),
                   torch.empty(Q, rows, width, dtype=cdt, device=vectors.device),
                   torch.empty(Q, rows, groups, 2, device=vectors.device))
        ws = [w.detach().contiguous().clone() for w in weights]
        bs = [b.detach().contiguous().clone() for b in biases]
        res = torch.empty(Q, n, dtype=torch.float32, device=vectors.device)

        def run():
            _scan(ws, bs, config, vectors, res, buffers, scales)

        run()  # compiles and autotunes outside the capture; its scores are this call's
        entry = _Captured(_capture(run), ws, bs, res, buffers)
        _GRAPHS[key] = entry
        while len(_GRAPHS) > _GRAPH_ENTRIES:
            _GRAPHS.popitem(last=False)
        return out.copy_(res)
    _GRAPHS.move_to_end(key)
    for dst, src in zip(entry.weights + entry.biases, list(weights) + list(biases)):
        dst.copy_(src)
    entry.replay()
    return out.copy_(entry.out)


def aot_variants():
    """The launches CI compiles ahead of time (engine.kernels.aot): the GEMM in every
    shipped tile with the published flags (bf16, with and without TMA), each other flag
    value once, and the light pass in each of its modes."""
    from ..qnet_config import QNetConfig
    from .aot import Variant

    out = []
    d, rows, Q = 64, 256, 2
    i8, u8 = torch.int8, torch.uint8  # float8_e4m3fn documents reach the kernels as uint8 bytes
    for label, dtype, ops, shared, tma, configs, doc_dtype in (
        ("bf16 tma", torch.bfloat16, (True, True, False), False, True, LAYER_CONFIGS, None),
        ("bf16", torch.bfloat16, (True, True, False), False, False, LAYER_CONFIGS, None),
        ("bf16 documents tma", torch.bfloat16, (True, True, False), True, True, LAYER_CONFIGS[:1], None),
        ("fp16 residual-first", torch.float16, (False, True, True), False, False, LAYER_CONFIGS[:1], None),
        ("fp32 ieee", torch.float32, (True, False, False), True, False, LAYER_CONFIGS_FP32, None),
        ("bf16 no norm", torch.bfloat16, (False, False, False), False, False, LAYER_CONFIGS[:1], None),
        ("bf16 int8 documents tma", torch.bfloat16, (True, True, False), True, True, LAYER_CONFIGS[:1], i8),
        ("bf16 int8 documents", torch.bfloat16, (True, True, False), True, False, LAYER_CONFIGS[:1], i8),
        ("bf16 fp8 documents tma", torch.bfloat16, (True, True, False), True, True, LAYER_CONFIGS[:1], u8),
        ("bf16 fp8 documents residual-first", torch.bfloat16, (False, True, True), True, False,
         LAYER_CONFIGS[:1], u8),
        ("fp32 ieee fp8 documents", torch.float32, (True, False, False), True, False, LAYER_CONFIGS_FP32[:1], u8),
    ):
        if tma and TensorDescriptor is None:
            continue
        x = torch.zeros((rows, d) if shared else (Q, rows, d), dtype=doc_dtype or dtype)
        w = torch.zeros(Q, d, d, dtype=dtype)
        p = torch.zeros(Q, rows, d, dtype=dtype)
        st = torch.zeros(Q, rows, d // STATS_GROUP, 2)
        doc = None if doc_dtype is None else (torch.ones(rows), doc_dtype == u8)
        args = _gemm_args(x, shared, w, torch.zeros(Q, d, dtype=dtype), p, st, rows,
                          QNetConfig().kernel_flags(), ops, tma, doc)
        args.update(SW=STATS_GROUP, UPCAST=False)
        # On sm_90 the half-precision GEMM must run on wgmma, fed by TMA when asked.
        expect = {} if dtype == torch.float32 else {90: ("wgmma.mma_async",) + (("cp.async.bulk.tensor",) if tma else ())}
        out.append(Variant(_layer_gemm_fp32 if dtype == torch.float32 else _layer_gemm, args, list(configs), label,
                           expect_ptx=expect))
    norm_config = [triton.Config({}, num_warps=4, num_stages=1)]
    for label, ops, last, shared, doc_dtype in (
        ("norm + residual", (True, True, False), False, False, None),
        ("norm", (True, False, False), False, False, None),
        ("norm + residual, scores", (True, True, False), True, False, None),
        ("norm, scores", (False, True, True), True, False, None),
        ("documents, scores", (False, False, False), True, True, None),
        ("norm + int8 documents residual", (True, True, False), False, False, i8),
        ("norm + fp8 documents residual", (True, True, False), False, False, u8),
        ("fp8 documents, scores", (False, False, False), True, True, u8),
    ):
        p = torch.zeros((rows, d) if shared else (Q, rows, d), dtype=doc_dtype if shared else torch.bfloat16)
        st = torch.zeros(Q, rows, d // STATS_GROUP, 2)
        x = torch.zeros(Q, rows, d, dtype=torch.bfloat16)
        r = x if doc_dtype is None or shared else torch.zeros(rows, d, dtype=doc_dtype)
        doc = None if doc_dtype is None else (torch.ones(rows), doc_dtype == u8)
        args, _ = _norm_args(p, shared, st, r, None if last else x, torch.zeros(Q, d, dtype=torch.bfloat16),
                             torch.zeros(Q, rows) if last else None, rows, d, 1e-5, ops, last, doc,
                             p_doc=shared, r_doc=not shared)
        args.update(SW=STATS_GROUP, BR=NORM_ROWS, BH=NORM_COLS)
        out.append(Variant(_layer_norm, args, norm_config, label))
    return out
