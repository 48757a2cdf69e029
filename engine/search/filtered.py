"""Exact search restricted to each query's allowed rows (:class:`.filters.RowFilter`).

Two strategies return the same top-k (score descending, ties to the lower row id); the
cheaper one runs:

- *gather*: score only the allowed rows. One bitmap for the whole batch: the allowed
  rows are copied out once and searched by the backend's exact scan (fused where it has
  one), their row ids mapped back. One bitmap per query: each query's allowed rows are
  scored by ``score_gather`` in column blocks (padded to the longest list), merged into
  a running top-k.
- *dense*: score every row in blocks (``score_dense``), mask the disallowed ones out,
  merge.

Gathering costs per row about ``GATHER_COST`` times what dense scoring does (scattered
reads, the padding of shorter lists); per-query bitmaps take the gather when the longest
list is under ``1 / GATHER_COST`` of the corpus. A shared bitmap always gathers: its copy
of the allowed rows is one pass over them, small beside their scoring.
"""

from __future__ import annotations

import torch

from .. import backends
from ..graph.common import sort_by_key
from ..native_args import to_numpy
from .exact import DEFAULT_BLOCK, check_block_size, exact_search
from .filters import RowFilter

# Measured by bench/bench_filter.py (--strategies) on the Debian set: per-query gather
# against masked dense scoring of the same batch; see docs/search.md.
GATHER_COST = 1.1


def _pad(Q: int, k: int, device):
    return (torch.full((Q, k), float("-inf"), dtype=torch.float32, device=device),
            torch.full((Q, k), -1, dtype=torch.int64, device=device))


def _merge(run_s, run_i, s, i, k: int):
    cs, ci = sort_by_key(torch.cat([run_s, s], 1), torch.cat([run_i, i], 1))
    return cs[:, :k].contiguous(), ci[:, :k].contiguous()


def strategy(rf: RowFilter, n: int, same_device: bool) -> str:
    """``"gather"`` or ``"dense"`` for this filter (see the module docstring)."""
    if rf.shared:
        return "gather"
    longest = int(rf.counts.max()) if rf.counts.numel() else 0
    return "gather" if same_device and longest * GATHER_COST < n else "dense"


def _gather_shared(qnets, vectors, k, rf, backend, block_size, num_threads):
    rows = rf.positions()[0]
    if rows.numel() == 0:
        return _pad(qnets.num_queries, k, qnets.device)
    if vectors.device.type == "cpu":  # numpy's copy: torch's threads cost more than a small gather
        sub = torch.from_numpy(to_numpy(vectors)[rows.numpy()])
        sub = sub.view(torch.bfloat16) if vectors.dtype == torch.bfloat16 else sub
    else:
        sub = vectors.index_select(0, rows.to(vectors.device))
    s, i = exact_search(qnets, sub, k, backend=backend, block_size=block_size, num_threads=num_threads)
    rows = rows.to(i.device)
    return s, torch.where(i >= 0, rows[i.clamp_min(0)], i)


def _gather_rows(qnets, vectors, k, rf, be, block, extra):
    """Per-query bitmaps: each query's allowed rows scored with score_gather."""
    Q, dev = qnets.num_queries, qnets.device
    run_s, run_i = _pad(Q, k, dev)
    pos = rf.positions().to(dev)  # (Q, longest) allowed rows, ascending, -1 after them
    longest = pos.shape[1]
    if longest == 0:
        return run_s, run_i
    for c0 in range(0, longest, block):
        ids = pos[:, c0 : c0 + block]
        valid = ids >= 0
        safe = torch.where(valid, ids, torch.zeros_like(ids)).contiguous()
        s = be.score_gather(qnets.weights, qnets.biases, qnets.config, vectors, safe, None, **extra)
        s = s.masked_fill(~valid, float("-inf"))
        run_s, run_i = _merge(run_s, run_i, s, ids, k)
    return run_s, run_i


def _dense(qnets, vectors, k, rf, be, block, extra):
    Q, n, dev = qnets.num_queries, vectors.shape[0], qnets.device
    run_s, run_i = _pad(Q, k, dev)
    mask = rf.per_query(Q)
    for s0 in range(0, n, block):
        blk = vectors[s0 : s0 + block]
        if blk.device != dev:
            blk = blk.to(dev, non_blocking=True)
        b = blk.shape[0]
        ok = mask[:, s0 : s0 + b].to(dev)
        if not bool(ok.any()):
            continue
        s = be.score_dense(qnets.weights, qnets.biases, qnets.config, blk, None, **extra)
        ids = torch.arange(s0, s0 + b, device=dev).expand(Q, b)
        s = s.masked_fill(~ok, float("-inf"))
        ids = torch.where(ok, ids, torch.full_like(ids, -1))
        run_s, run_i = _merge(run_s, run_i, s, ids, k)
    return run_s, run_i


def filtered_exact_search(qnets, vectors: torch.Tensor, k: int, rf: RowFilter, *, backend: str = "auto",
                          block_size: int | None = None, num_threads: int | None = None, how: str | None = None):
    """Exact top-``k`` of each query over its allowed rows ``rf`` (validated by the
    caller, like every other argument).

    ``how``: ``"gather"`` or ``"dense"`` to force a strategy (tests, benchmarks); None
    chooses by cost (:func:`strategy`).

    Returns ``(scores, ids)``: (Q, k) float32 and int64 row indices on the q-nets' device,
    best first, ties to the lower row; only allowed rows; slots beyond a query's allowed
    count hold ``(-inf, -1)``.
    """
    Q, n = qnets.num_queries, vectors.shape[0]
    device = qnets.device
    if Q == 0 or n == 0:
        return _pad(Q, k, device)
    how = how or strategy(rf, n, vectors.device == device)
    if how == "gather" and rf.shared:
        return _gather_shared(qnets, vectors, k, rf, backend, block_size, num_threads)
    be = backends.get_backend(backend, device)
    extra = {"num_threads": num_threads} if num_threads is not None and be.name == "cpu" else {}
    block = check_block_size(block_size, n) or min(DEFAULT_BLOCK, n)
    if how == "gather":
        if vectors.device != device:
            raise ValueError("a per-query gather needs the vectors on the q-nets' device")
        return _gather_rows(qnets, vectors, k, rf, be, block, extra)
    if how != "dense":
        raise ValueError(f"how must be 'gather', 'dense' or None, got {how!r}")
    return _dense(qnets, vectors, k, rf, be, block, extra)
