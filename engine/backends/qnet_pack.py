"""Pack a batch of q-nets into the flat layout the fused GPU kernels (Triton and CUDA) read.

The kernels take a variable number of layers of arbitrary widths, so instead of one
pointer per layer they read one buffer per query: every weight matrix (in, out) stored
row-major one after another, every bias after another, and a small int64 table
``meta`` (L + 1 rows) with each layer's geometry and its operations. ``pad`` rounds every
layer up to a multiple of ``pad`` in both dimensions with zeros: the CUDA kernels load
whole 16 x 16 tensor-core fragments and need no masks that way; the Triton kernels mask
and use ``pad=1``.

A layer's operations come from :meth:`QNetConfig.layer_ops` (the one rule every kernel
follows), as the columns ``RES``, ``LN_BEFORE`` and ``LN_AFTER``: the kernels compute
``y = act(x W + b)``, add ``x`` first when ``RES`` and not ``LN_BEFORE``, normalise when
``LN_BEFORE`` or ``LN_AFTER``, and add ``x`` after when ``RES`` and ``LN_BEFORE``. The
output layer's row has all three at 0. The activation and ``eps`` are the same for every
layer and reach the kernels from :meth:`QNetConfig.kernel_flags`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# meta columns (csrc/cuda/bindings.cpp reads them in this order)
DIN, DOUT, WOFF, BOFF, DIN_PAD, DOUT_PAD, RES, LN_BEFORE, LN_AFTER = range(9)
META_COLS = 9


@dataclass(frozen=True)
class PackedQNet:
    w: torch.Tensor  # (Q, total_w) weights, row-major per layer, the output layer last
    b: torch.Tensor  # (Q, total_b) hidden-layer biases (at least one element)
    meta: torch.Tensor  # (L + 1, META_COLS) int64 on the weights' device
    meta_rows: tuple  # the same table as Python ints, for launchers that pass it by value
    num_layers: int
    max_width: int  # widest layer (input or output), padded
    dim: int  # document vector width d


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def pack_qnet(weights, biases, config, pad: int = 1) -> PackedQNet:
    L = len(biases)
    Q = weights[0].shape[0]
    dtype, device = weights[0].dtype, weights[0].device
    rows, w_parts, b_parts = [], [], []
    woff = boff = 0
    max_width = 0
    for i, w in enumerate(weights):
        din, dout = int(w.shape[1]), int(w.shape[2])
        dinp, doutp = _round_up(din, pad), _round_up(dout, pad)
        ln_before, res, ln_after = config.layer_ops(i, L) if i < L else (False, False, False)
        rows.append((din, dout, woff, boff, dinp, doutp, int(res), int(ln_before), int(ln_after)))
        wp = w
        if (dinp, doutp) != (din, dout):
            wp = torch.zeros((Q, dinp, doutp), dtype=dtype, device=device)
            wp[:, :din, :dout] = w
        w_parts.append(wp.reshape(Q, -1))
        woff += dinp * doutp
        if i < L:
            b = biases[i]
            if doutp != dout:
                b = torch.nn.functional.pad(b, (0, doutp - dout))
            b_parts.append(b)
            boff += doutp
        max_width = max(max_width, dinp, doutp if i < L else 0)
    if not b_parts:  # L = 0: keep a valid (never read) pointer
        b_parts.append(torch.zeros((Q, 1), dtype=dtype, device=device))
    meta = torch.tensor(rows, dtype=torch.int64, device=device)
    return PackedQNet(
        w=torch.cat(w_parts, dim=1).contiguous(),
        b=torch.cat(b_parts, dim=1).contiguous(),
        meta=meta,
        meta_rows=tuple(rows),
        num_layers=L,
        max_width=max_width,
        dim=int(weights[0].shape[1]),
    )


# Graph search scores the same q-nets many times in a row: keep the last few packings.
_CACHE: dict = {}
_CACHE_SIZE = 8


def _fingerprint(t: torch.Tensor):
    return (t.data_ptr(), t._version, tuple(t.shape), tuple(t.stride()), t.dtype, t.device)


def packed(weights, biases, config, pad: int = 1) -> PackedQNet:
    """:func:`pack_qnet`, cached on the tensors' identity and version counters."""
    key = (pad, config, tuple(_fingerprint(t) for t in (*weights, *biases)))
    hit = _CACHE.get(key)
    if hit is not None:
        return hit[1]
    p = pack_qnet(weights, biases, config, pad)
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    # The entry holds the source tensors: while it lives their addresses cannot be reused
    # by new tensors, so an address match is never a stale hit.
    _CACHE[key] = (tuple(weights) + tuple(biases), p)
    return p
