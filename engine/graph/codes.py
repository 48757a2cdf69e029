"""Compressed codes for the linear candidate stage of the default graph search.

The default search turns candidate generation into maximum-inner-product search: find
the documents with the largest ``x . w`` for a q-net's gradient ``w``. Measured on the
synthetic 1M x 768 corpus (16 q-nets linearised at the corpus mean; exact q-net top-10 as
the target): an exact scan's top-2000 by ``x . w`` holds 98% of the q-net's top-10, but
off-the-shelf structures lose most of that top unless probed widely, because a gradient
behaves like a query from outside the data's distribution: faiss IVF4096 (Flat or SQ8)
holds 0.19 / 0.44 / 0.77 of the exact top-2000 at nprobe 16 / 64 / 256, 4-bit PQ fast-scan
on the raw coordinates 0.15, an inner-product HNSW 0.27-0.36 at ef 256-4096, ScaNN 0.53-0.93
at 12-22 ms per 1M. Fewer dimensions alone do not do it either: the spectrum decays slowly
(the top 64 principal directions hold 60% of the variance), so a PCA-64 copy in int8 needs
its top 50,000 to hold 95% of the exact top-500.

What does: a pass over a small code of *every* coordinate that matters, with the bits spent
where the variance is. Build: rotate ``x - mean`` onto the principal directions (from a
sample), quantise each coordinate with its own Lloyd-Max quantiser of 1, 2 or 4 bits, the
bit widths chosen by greedy reverse water-filling on the measured distortions under a
budget of ``bytes_per_vector`` (64 by default: at 8.8M x 768 the codes take 563 MB against
13.5 GB of bf16 vectors). The codes of up to four coordinates share one 4-bit sub-code, so
a query's estimate of ``(x - mean) . w`` is a sum of one 16-entry table lookup per
sub-code: the fast-scan technique (André et al., VLDB 2015; faiss's PQ fast-scan): uint8
tables, shuffles over blocks of 32 documents, uint16 sums (csrc/cpu/scan_*.cpp). Then the
best ``rerank`` estimates are re-ranked by their exact ``x . w`` on the stored rows. At 1M,
64 bytes per vector, the exact top-500 by ``x . w`` lies 96% inside the top 20,000 codes
and 99.4% inside the top 50,000 (PCA-64 int8 at the same bytes: 86% / 95%), and the whole
two-pass pipeline without the graph reached recall@10 0.97 with 1,000 q-net evaluations.
The pass is linear in n, at 64 bytes per document instead of 1,536 (bf16, d 768); see
bench/RESULTS.md for latency against n.

A second level (:class:`ResidualBits`, ``residual_bytes`` per document, 64 by default)
sharpens the estimate of the documents the first level keeps, so that fewer whole rows
(1,536 scattered bytes each) are re-ranked exactly: one bit per coordinate of the residual
``x - mean - reconstruction(x)``, on the residual's own principal directions, with a 1-bit
Lloyd-Max quantiser per coordinate. Its part of ``x . w`` is a dot product of the bits with
one per-query vector, read row by row for the kept documents only. At 1M, of the exact
top-512 by ``x . w``, the best 8,192 two-level estimates over the first level's best 32,768
hold 99% (the first level alone: 92% at 8,192, 97% at 16,384); 1-bit codes of the residual
matched the first level's own allocation at 128 bytes, at half the bytes read per kept
document. Alternatives measured: a joint 128-byte first level (96% / 99% at 4,096 / 8,192
kept, but a pass over twice the bytes), and re-ranking more rows exactly (2.3 ms per 16,384
rows at 1M on two cores, against about 1.1 ms for the second level over 32,768).

Layout and semantics of the arrays are those of ``CodesView`` in csrc/graph/linear.h.
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..quant import DequantizedRows

BLOCK = 32  # documents per block of the code layout
# Table units are split this finely for the residual bits' part of an estimate (a table
# unit is 1/255 of the widest sub-code's range: the residual's bits are each worth less).
RESIDUAL_UNITS = 64
_LEVEL_BITS = (0, 1, 2, 4)
# Gaussian Lloyd-Max reconstruction levels (unit variance), the starting points.
_GAUSS_LEVELS = {
    1: [-0.7979, 0.7979],
    2: [-1.510, -0.4528, 0.4528, 1.510],
    4: [-2.733, -2.069, -1.618, -1.256, -0.9424, -0.6568, -0.3881, -0.1284,
        0.1284, 0.3881, 0.6568, 0.9424, 1.256, 1.618, 2.069, 2.733],
}


@dataclass
class ResidualBits:
    """The second level of the codes: one bit per coordinate of what the first leaves.

    The residual ``x - mean - reconstruction(x)`` of every document, centred on its own
    mean and rotated onto its own principal directions (from the training sample), is
    quantised to one bit per coordinate (a 1-bit Lloyd-Max quantiser each), so that its
    part of ``(x - mean) . w`` is the dot product of a document's bits with a per-query
    vector. Stored row by row: the search reads only the rows the first level keeps.

    bits: ``(n, r / 8)`` uint8, coordinate ``k`` in bit ``k % 8`` of byte ``k // 8``.
    rotation: ``(d, r)`` float32; levels: ``(r, 2)`` float32 (the values of bit 0 and 1,
    ascending); mean: ``(d,)`` float32, the residual's mean.
    """

    bits: torch.Tensor
    rotation: torch.Tensor
    levels: torch.Tensor
    mean: torch.Tensor

    ARRAYS = ("bits", "rotation", "levels", "mean")

    def check(self, n: int, d: int) -> None:
        r = int(self.rotation.shape[1]) if self.rotation.dim() == 2 else -1
        if r < 8 or r % 8:
            raise ValueError(f"residual bits: {r} coordinates; expected a positive multiple of 8")
        expect = {"bits": ((n, r // 8), torch.uint8), "rotation": ((d, r), torch.float32),
                  "levels": ((r, 2), torch.float32), "mean": ((d,), torch.float32)}
        for name, (shape, dtype) in expect.items():
            t = getattr(self, name)
            if tuple(t.shape) != shape or t.dtype != dtype:
                raise ValueError(f"residual {name}: expected {dtype} {shape}, got {t.dtype} {tuple(t.shape)}")
        for name in ("rotation", "levels", "mean"):
            if not bool(torch.isfinite(getattr(self, name)).all()):
                raise ValueError(f"residual {name} holds a non-finite value")

    def encode(self, res: torch.Tensor) -> torch.Tensor:
        """``(rows, r / 8)`` uint8 bits of residual rows ``res`` (rows, d) float32."""
        y = (res - self.mean) @ self.rotation
        on = (y > (self.levels[:, 0] + self.levels[:, 1]) / 2).to(torch.uint8)
        weight = (1 << torch.arange(8, dtype=torch.int32)).to(torch.uint8)
        return (on.reshape(on.shape[0], -1, 8) * weight).sum(2, dtype=torch.uint8)

    def dots(self, w: torch.Tensor) -> torch.Tensor:
        """``(Q, r)`` float64: what bit k set adds to the estimate of ``x . w_q``."""
        wr = w.double() @ self.rotation.to(w.device).double()
        lev = self.levels.to(w.device).double()
        return wr * (lev[:, 1] - lev[:, 0])

    def unpacked(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``(rows, r)`` bool: the bits of documents ``rows`` (all when None)."""
        b = self.bits if rows is None else self.bits[rows]
        shift = torch.arange(8, dtype=torch.uint8, device=b.device)
        return ((b[..., None] >> shift) & 1).reshape(*b.shape[:-1], -1).bool()

    def to(self, device) -> "ResidualBits":
        return ResidualBits(*(getattr(self, a).to(device) for a in self.ARRAYS))


@dataclass
class LinearCodes:
    """The compressed codes of a corpus of ``n`` documents of width ``d``.

    codes: ``(ceil(n / 32), nsub / 2, 32)`` uint8 (see csrc/cpu/scan_ops.h).
    rotation: ``(d, r)`` float32, the principal directions of the ``r`` coded coordinates.
    dims, bits: ``(nsub, 4)`` int32: the coordinate (or -1) and bit width of each slot.
    levels: ``(r, 16)`` float32 reconstruction values of each coordinate.
    mean: ``(d,)`` float32 corpus mean (the codes' origin, and the default search's first
        linearisation point). params: how they were built (JSON-serialisable).
    residual: the optional second level (:class:`ResidualBits`), or None.
    """

    codes: torch.Tensor
    rotation: torch.Tensor
    dims: torch.Tensor
    bits: torch.Tensor
    levels: torch.Tensor
    mean: torch.Tensor
    n: int
    params: dict = field(default_factory=dict)
    residual: ResidualBits | None = None

    ARRAYS = ("codes", "rotation", "dims", "bits", "levels", "mean")

    @property
    def nsub(self) -> int:
        return int(self.dims.shape[0])

    def check(self, n: int, d: int) -> None:
        """ValueError unless every array has the shape and dtype of a corpus (n, d)."""
        nsub = self.nsub
        r = int(self.rotation.shape[1]) if self.rotation.dim() == 2 else -1
        expect = {
            "codes": ((-(-n // BLOCK), nsub // 2, BLOCK), torch.uint8),
            "rotation": ((d, r), torch.float32),
            "dims": ((nsub, 4), torch.int32),
            "bits": ((nsub, 4), torch.int32),
            "levels": ((r, 16), torch.float32),
            "mean": ((d,), torch.float32),
        }
        if self.n != n:
            raise ValueError(f"codes cover {self.n} documents, the index holds {n}")
        if nsub < 4 or nsub % 4 or nsub > 256:
            raise ValueError(f"codes: {nsub} sub-codes; expected a multiple of 4 in 4..256")
        for name, (shape, dtype) in expect.items():
            t = getattr(self, name)
            if tuple(t.shape) != shape or t.dtype != dtype:
                raise ValueError(f"codes {name}: expected {dtype} {shape}, got {t.dtype} {tuple(t.shape)}")
        dims, bits = self.dims, self.bits
        if bool(((dims < -1) | (dims >= r)).any()) or bool(((bits < 0) | (bits > 4)).any()):
            raise ValueError("codes dims/bits out of range")
        if bool(((dims < 0) & (bits != 0)).any()) or bool((bits.sum(1) > 4).any()):
            raise ValueError("codes: a sub-code holds more than 4 bits or bits without a coordinate")
        for name in ("rotation", "levels", "mean"):
            if not bool(torch.isfinite(getattr(self, name)).all()):
                raise ValueError(f"codes {name} holds a non-finite value")
        if self.residual is not None:
            self.residual.check(n, d)

    def native(self) -> tuple:
        """The tuple ``engine._C`` takes (numpy views, no copies of contiguous arrays):
        (codes, rotation, dims, bits, levels) and, with a second level, its (bits,
        rotation, levels)."""
        first = tuple(getattr(self, a).contiguous().numpy() for a in ("codes", "rotation", "dims", "bits", "levels"))
        if self.residual is None:
            return first
        return first + tuple(getattr(self.residual, a).contiguous().numpy() for a in ("bits", "rotation", "levels"))

    def _groups(self) -> list:
        """The quantisers of the coded coordinates as :func:`_encode` takes them: per bit
        width, the coordinates and the midpoints between their levels."""
        width = torch.zeros(self.rotation.shape[1], dtype=torch.int64)
        used = (self.dims >= 0) & (self.bits > 0)
        width[self.dims[used].long()] = self.bits[used].long()
        groups = []
        for b in (1, 2, 4):
            sel = torch.nonzero(width == b).flatten()
            if sel.numel():
                lev = self.levels[sel, : 1 << b]
                groups.append((b, (sel, (lev[:, 1:] + lev[:, :-1]) / 2)))
        return groups

    def appended(self, rows, n: int, chunk: int = 1 << 15) -> "LinearCodes":
        """The codes of a corpus of ``n`` documents whose first ``self.n`` are this one's:
        the new rows encoded with this rotation, mean and quantisers (no training).
        ``rows(start, stop)`` returns the corpus rows ``start:stop`` (any float dtype);
        only the rows from the last partial block of 32 on are read."""
        if n < self.n:
            raise ValueError(f"appended codes need n >= {self.n}, got {n}")
        b0 = self.n // BLOCK
        out = torch.empty((-(-n // BLOCK), self.codes.shape[1], BLOCK), dtype=torch.uint8)
        out[:b0] = self.codes[:b0]
        res = self.residual
        res_bits = None
        if res is not None:
            res_bits = torch.empty((n, res.bits.shape[1]), dtype=torch.uint8)
            res_bits[: self.n] = res.bits
        for s in range(b0 * BLOCK, n, chunk):
            x = rows(s, min(n, s + chunk)).to("cpu", torch.float32)
            _encode_rows(x, out, s, self, res_bits, skip=max(0, self.n - s))
        residual = None if res is None else ResidualBits(res_bits, res.rotation, res.levels, res.mean)
        return LinearCodes(out, self.rotation, self.dims, self.bits, self.levels, self.mean, n, dict(self.params),
                           residual)

    def select(self, rows: torch.Tensor) -> "LinearCodes":
        """The codes of the documents ``rows`` (int64 (m,), in the order given), as they
        are: no document is encoded again."""
        nb, half, _ = self.codes.shape
        per_row = self.codes.permute(0, 2, 1).reshape(nb * BLOCK, half)[rows]
        m = int(rows.numel())
        padded = -(-m // BLOCK) * BLOCK
        if padded > m:
            # Padding slots hold the code of a zero row, as build_codes writes them.
            zero = _encode(torch.zeros(BLOCK, self.rotation.shape[1]), self._groups(), self.dims, self.bits)
            pad = zero.permute(0, 2, 1).reshape(BLOCK, half)[: padded - m]
            per_row = torch.cat([per_row, pad])
        out = per_row.reshape(padded // BLOCK, BLOCK, half).permute(0, 2, 1).contiguous()
        res = self.residual
        residual = None if res is None else ResidualBits(res.bits[rows].contiguous(), res.rotation, res.levels, res.mean)
        return LinearCodes(out, self.rotation, self.dims, self.bits, self.levels, self.mean, m, dict(self.params),
                           residual)

    def to(self, device) -> "LinearCodes":
        res = None if self.residual is None else self.residual.to(device)
        return LinearCodes(*(getattr(self, a).to(device) for a in self.ARRAYS), self.n, dict(self.params), res)

    # -------------------------------------------------------------- torch twins
    def lut(self, w: torch.Tensor) -> torch.Tensor:
        """``(Q, nsub, 16)`` uint8 lookup tables of directions ``w`` (Q, d) (twin of
        ``build_lut`` in csrc/graph/linear.cpp: one scale for all tables of a query)."""
        return self.lut_and_scale(w)[0]

    def lut_and_scale(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The tables of :meth:`lut` and their scales ``(Q,)`` float64 (table units per
        unit of ``x . w``; 0 where every table is flat)."""
        dev = w.device
        wr = w.double() @ self.rotation.to(dev).double()  # (Q, r)
        dims, bits = self.dims.to(dev).long(), self.bits.to(dev).long()
        off = torch.cumsum(bits, 1) - bits  # bit offset of each slot
        e = torch.arange(16, device=dev)
        val = (e[None, :, None] >> off[:, None, :]) & ((1 << bits[:, None, :]) - 1)  # (nsub, 16, 4)
        used = (dims >= 0) & (bits > 0)
        safe = dims.clamp_min(0)
        lev = self.levels.to(dev).double()[safe[:, None, :], val]  # (nsub, 16, 4)
        contrib = wr[:, safe][:, :, None, :] * lev[None]  # (Q, nsub, 16, 4)
        f = (contrib * used[None, :, None, :]).sum(-1)
        lo = f.min(-1, keepdim=True).values
        rng = (f.max(-1).values - lo[..., 0]).max(-1).values  # (Q,)
        scale = torch.where((rng > 0) & torch.isfinite(rng), 255.0 / rng, torch.zeros_like(rng))
        return torch.round((f - lo) * scale[:, None, None]).clamp(0, 255).to(torch.uint8), scale

    def residual_table(self, w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``(Q, r)`` int32: what each residual bit adds to the table sum, in units of
        ``1 / RESIDUAL_UNITS`` of a table unit (twin of ``build_residual`` in
        csrc/graph/linear.cpp); integers, so that every order of summation agrees."""
        g = torch.round(self.residual.dots(w) * (scale[:, None] * RESIDUAL_UNITS))
        bound = (1 << 29) // g.shape[1]  # the sum of any bits stays inside int32
        return torch.where(torch.isfinite(g), g, torch.zeros_like(g)).clamp(-bound, bound).to(torch.int32)

    def sums(self, lut: torch.Tensor, block: int = 1 << 16) -> torch.Tensor:
        """``(Q, n)`` int32 table sums of every document (twin of the native scan)."""
        Q = lut.shape[0]
        dev = lut.device
        out = torch.empty((Q, self.n), dtype=torch.int32, device=dev)
        codes = self.codes.to(dev)
        nsub = self.nsub
        j = torch.arange(nsub, device=dev)
        for b0 in range(0, codes.shape[0], block // BLOCK):
            c = codes[b0 : b0 + block // BLOCK]  # (nb, nsub/2, 32)
            sub = torch.stack([c & 15, c >> 4], 2).reshape(c.shape[0], nsub, BLOCK)
            sub = sub.permute(0, 2, 1).reshape(-1, nsub).long()  # (nb*32, nsub)
            s0, s1 = b0 * BLOCK, min(self.n, (b0 + c.shape[0]) * BLOCK)
            for q in range(Q):
                out[q, s0:s1] = lut[q][j[None, :], sub[: s1 - s0]].int().sum(1)
        return out


# ------------------------------------------------------------------ build


class _SortedColumns:
    """Per-column sorted samples with prefix sums: the cells of sorted levels, their sums
    and their squared errors in O(levels x log N) per column, whatever N."""

    def __init__(self, y: torch.Tensor):
        self.v = torch.sort(y.T.contiguous().double(), dim=1)[0].contiguous()  # (D, N)
        z = torch.zeros(self.v.shape[0], 1, dtype=torch.float64)
        self.s1 = torch.cat([z, torch.cumsum(self.v, 1)], 1)
        self.s2 = torch.cat([z, torch.cumsum(self.v * self.v, 1)], 1)

    def cells(self, lev: torch.Tensor):
        """(count, sum, sum of squares) of the samples nearest each level (D, L)."""
        thr = (lev[:, 1:] + lev[:, :-1]) / 2
        pos = torch.searchsorted(self.v, thr.contiguous(), right=True)  # (D, L - 1)
        D, N = self.v.shape
        edges = torch.cat([torch.zeros(D, 1, dtype=torch.int64), pos, torch.full((D, 1), N)], 1)
        lo, hi = edges[:, :-1], edges[:, 1:]
        cnt = (hi - lo).double()
        s1 = torch.gather(self.s1, 1, hi) - torch.gather(self.s1, 1, lo)
        s2 = torch.gather(self.s2, 1, hi) - torch.gather(self.s2, 1, lo)
        return cnt, s1, s2


def _lloyd_max(cols: _SortedColumns, bits: int, iters: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column Lloyd-Max levels ``(D, 2^bits)`` (sorted) and their mean squared errors."""
    v = cols.v
    if v.shape[1] == 0:  # no samples: the Gaussian levels, finite placeholders
        lev = torch.tensor(_GAUSS_LEVELS[bits], dtype=torch.float32)[None, :].repeat(v.shape[0], 1)
        return lev, torch.zeros(v.shape[0], dtype=torch.float64)
    mean = cols.s1[:, -1:] / v.shape[1]
    std = (cols.s2[:, -1:] / v.shape[1] - mean * mean).clamp_min(1e-24).sqrt()
    lev = torch.tensor(_GAUSS_LEVELS[bits], dtype=torch.float64)[None, :] * std + mean
    for _ in range(iters):
        cnt, s1, _ = cols.cells(lev)
        lev, _ = torch.sort(torch.where(cnt > 0, s1 / cnt.clamp_min(1), lev), 1)
    cnt, s1, s2 = cols.cells(lev)
    mse = (s2 - 2 * lev * s1 + lev * lev * cnt).sum(1) / v.shape[1]
    return lev.float(), mse


def _allocate(dist: dict, budget_bits: int) -> np.ndarray:
    """Bits per coordinate (0, 1, 2 or 4): greedy reverse water-filling, each step buying
    the next width of the coordinate with the largest distortion drop per bit."""
    D = len(dist[0])
    bits = np.zeros(D, dtype=np.int64)
    nxt = {0: 1, 1: 2, 2: 4}
    heap = [(-(dist[0][i] - dist[1][i]), i) for i in range(D)]
    heapq.heapify(heap)
    used = 0
    while heap:
        _, i = heapq.heappop(heap)
        b = int(bits[i])
        nb = nxt[b]
        if used + nb - b > budget_bits:
            continue
        bits[i] = nb
        used += nb - b
        if nb in nxt:
            nb2 = nxt[nb]
            heapq.heappush(heap, (-(dist[nb][i] - dist[nb2][i]) / (nb2 - nb), i))
    return bits


def _pack(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slots ``(dims, bits)`` of the sub-codes: coordinates (indices into ``bits``) placed
    widest first into 4-bit sub-codes (always ceil(total / 4) of them: the widths divide
    4), padded to a multiple of 4 sub-codes."""
    subs: list[list[tuple[int, int]]] = []
    free: list[int] = []
    for i in sorted(range(len(bits)), key=lambda i: (-bits[i], i)):
        b = int(bits[i])
        if b == 0:
            continue
        for s, f in enumerate(free):
            if f >= b:
                subs[s].append((i, b))
                free[s] -= b
                break
        else:
            subs.append([(i, b)])
            free.append(4 - b)
    nsub = max(4, -(-len(subs) // 4) * 4)
    dims = np.full((nsub, 4), -1, dtype=np.int32)
    out_bits = np.zeros((nsub, 4), dtype=np.int32)
    for j, slots in enumerate(subs):
        for s, (i, b) in enumerate(slots):
            dims[j, s], out_bits[j, s] = i, b
    return dims, out_bits


def _cells(y: torch.Tensor, groups: list) -> torch.Tensor:
    """``(rows, r)`` uint8: the level of every coordinate of the rotated rows y."""
    code = torch.zeros((y.shape[0], y.shape[1]), dtype=torch.uint8)
    for _, (sel, thr) in groups:
        ys = y[:, sel]
        c = torch.zeros(ys.shape, dtype=torch.uint8)
        for t in range(thr.shape[1]):  # the cell: how many midpoints lie below
            c += ys > thr[:, t]
        code[:, sel] = c
    return code


def _dequantize(cells: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """The quantised values ``(rows, r)`` of the levels ``cells`` (:func:`_cells`)."""
    return levels.T.gather(0, cells.long())


def _encode(y: torch.Tensor, groups: list, dims: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Byte codes ``(rows / 32, nsub / 2, 32)`` of the rotated rows y (rows a multiple of 32)."""
    return _pack_cells(_cells(y, groups), dims, bits)


def _pack_cells(code: torch.Tensor, dims: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """The byte codes of the levels ``code`` (rows, r) (rows a multiple of 32)."""
    rows = code.shape[0]
    sub = torch.zeros((rows, dims.shape[0]), dtype=torch.uint8)
    off = torch.zeros(dims.shape[0], dtype=torch.uint8)
    for s in range(4):
        used = (dims[:, s] >= 0) & (bits[:, s] > 0)
        part = code[:, dims[:, s].clamp_min(0).long()] * used.to(torch.uint8)
        sub |= part << off  # per-column shifts: an elementwise op on uint8
        off += bits[:, s].to(torch.uint8)
    byte = sub[:, 0::2] | (sub[:, 1::2] << 4)  # (rows, nsub/2)
    return byte.reshape(rows // BLOCK, BLOCK, -1).permute(0, 2, 1).contiguous()


def _encode_rows(x: torch.Tensor, out: torch.Tensor, s: int, c: LinearCodes, res_bits, skip: int = 0) -> None:
    """Encodes the rows ``x`` (float32) of documents ``s, s + 1, ...`` into the blocks of
    ``out`` (s a multiple of 32) and, with ``res_bits``, their residual bits, leaving the
    first ``skip`` rows' residual bits as they are. The one encoder of build and append."""
    xc = x - c.mean
    y = xc @ c.rotation
    rows = -(-y.shape[0] // BLOCK) * BLOCK
    if rows > y.shape[0]:  # padding slots hold the code of a zero row
        y = torch.cat([y, torch.zeros(rows - y.shape[0], y.shape[1])])
    cells = _cells(y, c._groups())
    out[s // BLOCK : s // BLOCK + rows // BLOCK] = _pack_cells(cells, c.dims, c.bits)
    if res_bits is not None and skip < x.shape[0]:
        yq = _dequantize(cells[skip : x.shape[0]], c.levels)
        res_bits[s + skip : s + x.shape[0]] = c.residual.encode(torch.addmm(xc[skip:], yq, c.rotation.T, alpha=-1))


def corpus_mean(vectors: torch.Tensor, chunk: int = 1 << 16) -> torch.Tensor:
    """Mean row (float32), accumulated in float64 chunk by chunk."""
    acc = torch.zeros(vectors.shape[1], dtype=torch.float64)
    for s in range(0, vectors.shape[0], chunk):
        acc += vectors[s : s + chunk].to("cpu", torch.float64).sum(0)
    return (acc / max(1, vectors.shape[0])).float()


def principal_axes(vectors: torch.Tensor, mean: torch.Tensor, train_size: int, seed: int):
    """``(P, ys)``: the principal directions of a sample of ``train_size`` rows as the
    columns of P (d, d), largest variance first, and the sample's coordinates ys (m, d)."""
    n, d = vectors.shape
    rng = np.random.default_rng([seed, 0xC0DE])
    m = min(n, int(train_size))
    ids = torch.from_numpy(np.sort(rng.choice(n, size=m, replace=False))) if m < n else torch.arange(n)
    xs = vectors[ids.to(vectors.device)].to("cpu", torch.float32) - mean if n else torch.zeros(0, d)
    if m >= 2:
        cov = (xs.T.double() @ xs.double()) / m
        evals, evecs = torch.linalg.eigh(cov)
        P = evecs[:, torch.argsort(evals, descending=True)].float().contiguous()
    else:
        P = torch.eye(d)
    return P, xs @ P


def _residual_quantiser(xs: torch.Tensor, recon: torch.Tensor, coords: int) -> ResidualBits:
    """The second level's rotation, levels and mean from training rows ``xs`` (centred on
    the corpus mean) and their first-level reconstructions (the bits left empty)."""
    res = xs - recon
    mean = res.mean(0) if res.shape[0] else torch.zeros(xs.shape[1])
    if res.shape[0] >= 2:
        z = (res - mean).double()
        evals, evecs = torch.linalg.eigh(z.T @ z / res.shape[0])
        rot = evecs[:, torch.argsort(evals, descending=True)[:coords]].float().contiguous()
    else:
        rot = torch.eye(xs.shape[1])[:, :coords].contiguous()
    levels, _ = _lloyd_max(_SortedColumns((res - mean) @ rot), 1)
    return ResidualBits(torch.zeros((0, coords // 8), dtype=torch.uint8), rot, levels.contiguous(), mean.float())


def build_codes(vectors: torch.Tensor, *, bytes_per_vector: int = 64, residual_bytes: int = 64,
                train_size: int = 131_072, seed: int = 0, progress: bool = False) -> LinearCodes:
    """Build the codes of ``vectors`` (n, d) (any float dtype; a memory-mapped corpus is
    streamed in chunks).

    Args:
        bytes_per_vector: first-level code bytes per document (a multiple of 2, 2..128).
        residual_bytes: second-level bytes per document (:class:`ResidualBits`: one bit
            per coordinate of the residual, at most d / 8 bytes; 0 for none). At 1M x 768
            the re-ranked rows a recall needs fall about fourfold with 64 of them (see
            bench/RESULTS.md).
        train_size: rows sampled for the principal directions and the quantisers.
        seed: the sample.

    The quantisers are trained on the rows present (no second level from fewer than two);
    rows appended later (``Index.add``) are encoded with them, so an index that has grown
    far beyond the rows its codes were trained on is better served by new codes
    (``Index.build_codes``).

    Raises:
        ValueError / TypeError: bad arguments, or values too large for the codes' float32
        arithmetic.
    """
    if not isinstance(vectors, (torch.Tensor, DequantizedRows)) or vectors.dim() != 2:
        raise TypeError("vectors must be a 2-D torch.Tensor (or engine.quant.DequantizedRows)")
    for name, v, lo, hi in (("bytes_per_vector", bytes_per_vector, 2, 128), ("residual_bytes", residual_bytes, 0, 1024),
                            ("train_size", train_size, 1, 1 << 24)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
        if not lo <= v <= hi:
            raise ValueError(f"{name} must be in [{lo}, {hi}], got {v}")
    if bytes_per_vector % 2:
        raise ValueError(f"bytes_per_vector must be even, got {bytes_per_vector}")
    t0 = time.perf_counter()
    n, d = vectors.shape
    mean = corpus_mean(vectors)
    P, ys = principal_axes(vectors, mean, train_size, seed)
    m = ys.shape[0]
    # Distortions of every coordinate at 0, 1, 2 and 4 bits on (part of) the sample.
    cols = _SortedColumns(ys)
    dist = {0: cols.v.pow(2).mean(1).numpy()}
    levels_by_bits = {}
    for b in (1, 2, 4):
        levels_by_bits[b], mse = _lloyd_max(cols, b)
        dist[b] = mse.numpy()
    all_bits = _allocate(dist, 8 * bytes_per_vector) if n else np.zeros(d, dtype=np.int64)
    coded = np.flatnonzero(all_bits > 0)
    if coded.size == 0:  # a constant corpus: one coordinate at one bit keeps the shapes
        coded = np.array([0])
        all_bits[0] = 1
    cbits = all_bits[coded]
    dims, bits = _pack(cbits)
    rotation = P[:, torch.from_numpy(coded)].contiguous()
    levels = torch.zeros(len(coded), 16)
    groups = []
    for b in (1, 2, 4):
        sel = np.flatnonzero(cbits == b)
        if sel.size:
            lev = levels_by_bits[b][torch.from_numpy(coded[sel])]
            levels[torch.from_numpy(sel), : 1 << b] = lev
            groups.append((b, (torch.from_numpy(sel), (lev[:, 1:] + lev[:, :-1]) / 2)))
    dims_t, bits_t = torch.from_numpy(dims), torch.from_numpy(bits)
    nsub = dims.shape[0]
    nb = -(-n // BLOCK)
    out = torch.zeros((nb, nsub // 2, BLOCK), dtype=torch.uint8)
    res = None
    coords = min(8 * residual_bytes, d // 8 * 8)
    if coords >= 8 and ys.shape[0] >= 2:
        xs = ys @ P.T  # the sample, centred
        y1 = xs @ rotation
        res = _residual_quantiser(xs, _dequantize(_cells(y1, groups), levels) @ rotation.T, coords)
        res.bits = torch.empty((n, coords // 8), dtype=torch.uint8)
    chunk = 1 << 15
    starts = range(0, n, chunk)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="candidate codes", unit="chunk")
    quantisers = [rotation, levels, mean] + ([res.rotation, res.levels, res.mean] if res is not None else [])
    if not all(bool(torch.isfinite(t).all()) for t in quantisers):
        raise ValueError("build_codes: the vectors' values are too large for the codes' float32 arithmetic "
                         "(their principal coordinates or quantisers overflow)")
    first = LinearCodes(out, rotation, dims_t, bits_t, levels, mean, n, {}, res)
    for s in starts:
        _encode_rows(vectors[s : s + chunk].to("cpu", torch.float32), out, s, first,
                     None if res is None else res.bits)
    params = {"bytes_per_vector": int(bytes_per_vector), "train_size": int(m), "seed": int(seed),
              "coordinates": int(len(coded)), "sub_codes": int(nsub),
              "bits": {str(b): int((cbits == b).sum()) for b in (1, 2, 4)},
              "residual_bytes": int(coords // 8) if res is not None else 0,
              "build_seconds": round(time.perf_counter() - t0, 3)}
    return LinearCodes(out, rotation, dims_t, bits_t, levels, mean, n, params, res)
