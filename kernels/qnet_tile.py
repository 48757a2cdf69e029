"""The fused q-net on one tile of documents, shared by the dense and gather kernels.

A program scores ``BN`` documents for one query and runs every layer on them: for each
``BH``-wide slice of a layer's output it accumulates ``tl.dot`` over ``BK``-wide slices
of the input in float32, then adds the bias and applies relu, and the layer norm,
residual and output dot follow. Everything is masked, so any width and any n work.

Where the activations live: Triton has no way to slice a register tensor by a run-time
index, and a whole 768 x 768 weight matrix cannot be one ``tl.dot`` operand (it would need
1.2 MB of shared memory), so a layer is computed slice by slice and the slices have to be
parked somewhere in between. They go to a scratch tile private to the program
(``xs``: the layer input in the compute dtype, ``ys``: the raw float32 output before
normalisation), which the program writes and reads back at once and reuses for every
tile it scores. The grid is persistent, so the scratch is ``programs x BN x width`` and
stays in L1/L2; no (Q, n, width) activation tensor ever exists. The CUDA kernels keep the
same two tiles in shared memory instead.

Barriers: other threads of the program read what a thread stored to the scratch, so
every phase ends with ``tl.debug_barrier()`` (a CTA barrier, which also orders global
memory within the CTA).
"""

import triton
import triton.language as tl

from ..backends import qnet_pack
from .doc_decode import decode_rows

# The columns of the packed ``meta`` table. A jit function may read a module global only
# when it is a ``tl.constexpr``: the interpreter accepts a plain int, the compiler does not.
META_COLS = tl.constexpr(qnet_pack.META_COLS)
DIN = tl.constexpr(qnet_pack.DIN)
DOUT = tl.constexpr(qnet_pack.DOUT)
WOFF = tl.constexpr(qnet_pack.WOFF)
BOFF = tl.constexpr(qnet_pack.BOFF)
DOUT_PAD = tl.constexpr(qnet_pack.DOUT_PAD)
RES = tl.constexpr(qnet_pack.RES)
LN_BEFORE = tl.constexpr(qnet_pack.LN_BEFORE)
LN_AFTER = tl.constexpr(qnet_pack.LN_AFTER)


@triton.jit
def _dot(a, b, acc, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    if UPCAST:
        # The Triton interpreter multiplies bf16 tensors wrongly; float32 operands give
        # the same products (bf16/fp16 -> fp32 is exact, accumulation is fp32 anyway).
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def qnet_tile(
    rows, row_ok,  # (BN,) int64 document ids, (BN,) valid-row mask
    vec_ptr, stride_v, d,
    sc_ptr,  # with SCALED: float32 (n,) per-row scales of compressed vectors
    w_ptr, b_ptr, meta_ptr, L,  # this query's packed weights and biases
    xs_ptr, ys_ptr, ld_s,  # this program's scratch tiles, row stride ld_s
    eps,
    BN: tl.constexpr, BK: tl.constexpr, BH: tl.constexpr,
    ACT_RELU: tl.constexpr, LAYER_NORM: tl.constexpr,  # LAYER_NORM: any layer normalises
    IEEE: tl.constexpr, UPCAST: tl.constexpr,
    SCALED: tl.constexpr, FP8: tl.constexpr,  # int8 (or with FP8, e4m3 bytes) rows and scales
):
    """Scores (BN,) float32 of the tile; invalid rows hold garbage the caller masks.
    Each layer's residual and layer norms follow its ``meta`` row (engine.backends.qnet_pack).

    Compressed rows (``SCALED``) enter the scratch as their raw values (int8 and e4m3
    values are exact in every compute dtype); ``xscale``, the scale of what the scratch
    holds, multiplies every read of it (the first layer's accumulator, which is linear
    in its input, the residuals and, with no hidden layer, the output dot) until the
    first layer's output replaces it."""
    cdt = w_ptr.dtype.element_ty
    r = tl.arange(0, BN)
    ck = tl.arange(0, BK)
    ch = tl.arange(0, BH)

    # The documents enter the scratch in the compute dtype; invalid rows become zeros so
    # that nothing downstream (layer norm of a zero row included) makes NaN.
    for k0 in range(0, d, BK):
        cols = k0 + ck
        cm = cols < d
        v = tl.load(vec_ptr + rows[:, None] * stride_v + cols[None, :],
                    mask=row_ok[:, None] & cm[None, :], other=0)
        if SCALED:
            v = decode_rows(v, FP8)
        tl.store(xs_ptr + r[:, None] * ld_s + cols[None, :], v.to(cdt), mask=cm[None, :])
    xscale = tl.full((BN,), 1.0, tl.float32)
    if SCALED:
        xscale = tl.load(sc_ptr + rows, mask=row_ok, other=0.0)
    tl.debug_barrier()

    for layer in range(L):
        m = meta_ptr + layer * META_COLS
        din = tl.load(m + DIN).to(tl.int32)
        dout = tl.load(m + DOUT).to(tl.int32)
        woff = tl.load(m + WOFF)
        boff = tl.load(m + BOFF)
        ldw = tl.load(m + DOUT_PAD)
        has_res = tl.load(m + RES) != 0
        ln_before = tl.load(m + LN_BEFORE) != 0
        normalise = ln_before | (tl.load(m + LN_AFTER) != 0)
        res_first = has_res & (ln_before == 0)  # the residual goes in before the norm
        res_last = has_res & ln_before

        # Phase 1: y = act(x @ W + b) (+ x when the norm comes after the residual).
        s1 = tl.zeros((BN,), tl.float32)
        for j0 in range(0, dout, BH):
            cols = j0 + ch
            cm = cols < dout
            acc = tl.zeros((BN, BH), tl.float32)
            for k0 in range(0, din, BK):
                kk = k0 + ck
                km = kk < din
                a = tl.load(xs_ptr + r[:, None] * ld_s + kk[None, :], mask=km[None, :], other=0.0)
                b = tl.load(w_ptr + woff + kk[:, None] * ldw + cols[None, :],
                            mask=km[:, None] & cm[None, :], other=0.0)
                acc = _dot(a, b, acc, IEEE, UPCAST)
            bias = tl.load(b_ptr + boff + cols, mask=cm, other=0.0).to(tl.float32)
            if SCALED:
                acc = acc * xscale[:, None]
            y = acc + bias[None, :]
            if ACT_RELU:
                y = tl.maximum(y, 0.0)
            if res_first:
                xr = tl.load(xs_ptr + r[:, None] * ld_s + cols[None, :], mask=cm[None, :], other=0.0)
                xr = xr.to(tl.float32)
                if SCALED:
                    xr = xr * xscale[:, None]
                y = y + xr
            y = tl.where(cm[None, :], y, 0.0)
            s1 += tl.sum(y, axis=1)
            tl.store(ys_ptr + r[:, None] * ld_s + cols[None, :], y, mask=cm[None, :])
        tl.debug_barrier()

        # Phase 2: layer-norm statistics, two-pass (as exact as the reference's).
        mean = tl.zeros((BN,), tl.float32)
        rstd = tl.full((BN,), 1.0, tl.float32)
        if LAYER_NORM:
            if normalise:
                mean = s1 / dout
                s2 = tl.zeros((BN,), tl.float32)
                for j0 in range(0, dout, BH):
                    cols = j0 + ch
                    cm = cols < dout
                    y = tl.load(ys_ptr + r[:, None] * ld_s + cols[None, :], mask=cm[None, :], other=0.0)
                    dl = tl.where(cm[None, :], y - mean[:, None], 0.0)
                    s2 += tl.sum(dl * dl, axis=1)
                rstd = 1.0 / tl.sqrt(s2 / dout + eps)

        # Phase 3: normalise, add the residual, and make it the next layer's input.
        for j0 in range(0, dout, BH):
            cols = j0 + ch
            cm = cols < dout
            y = tl.load(ys_ptr + r[:, None] * ld_s + cols[None, :], mask=cm[None, :], other=0.0)
            if LAYER_NORM:
                y = (y - mean[:, None]) * rstd[:, None]
            if res_last:
                xr = tl.load(xs_ptr + r[:, None] * ld_s + cols[None, :], mask=cm[None, :], other=0.0)
                xr = xr.to(tl.float32)
                if SCALED:
                    xr = xr * xscale[:, None]
                y = y + xr
            tl.store(xs_ptr + r[:, None] * ld_s + cols[None, :], y.to(cdt), mask=cm[None, :])
        xscale = tl.full((BN,), 1.0, tl.float32)  # the scratch now holds plain activations
        tl.debug_barrier()

    # Output layer: one column, so a multiply-and-reduce rather than a dot.
    m = meta_ptr + L * META_COLS
    hl = tl.load(m + DIN).to(tl.int32)
    woff = tl.load(m + WOFF)
    ldw = tl.load(m + DOUT_PAD)
    score = tl.zeros((BN,), tl.float32)
    for k0 in range(0, hl, BK):
        kk = k0 + ck
        km = kk < hl
        x = tl.load(xs_ptr + r[:, None] * ld_s + kk[None, :], mask=km[None, :], other=0.0)
        wo = tl.load(w_ptr + woff + kk * ldw, mask=km, other=0.0)
        score += tl.sum(x.to(tl.float32) * wo.to(tl.float32)[None, :], axis=1)
    if SCALED:
        score = score * xscale  # ones unless there is no hidden layer
    tl.debug_barrier()  # the next tile overwrites the scratch
    return score
