"""Exact search: stream the corpus in blocks, keep a running top-k per query.

Memory stays bounded by one block of scores (Q x block_size) and the running (Q, k)
top-k, whatever the corpus size, so a memory-mapped corpus larger than RAM streams
through. Backends with a fused scan (``exact_topk``) run the whole loop natively.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import backends

DEFAULT_BLOCK = 16384
MAX_BLOCK = 1 << 16  # the largest block every backend streams (the CPU kernels cap theirs here)


def _merge_torch(run_s, run_i, blk_s, base):
    """Merge a block into the running top-k with torch ops (any device).

    A stable descending sort keeps equal scores in id order, and running ids are all
    lower than the block's, so ties go to the lower id.
    """
    k = run_s.shape[1]
    Q, b = blk_s.shape
    blk_i = torch.arange(base, base + b, device=blk_s.device, dtype=torch.int64).expand(Q, b)
    if b > k:  # keep the block's own best k first: less to sort in the merge
        s, order = torch.sort(blk_s, dim=1, descending=True, stable=True)
        blk_s, blk_i = s[:, :k], torch.gather(blk_i, 1, order[:, :k])
    cs = torch.cat([run_s, blk_s], dim=1)
    ci = torch.cat([run_i, blk_i], dim=1)
    s, order = torch.sort(cs, dim=1, descending=True, stable=True)
    return s[:, :k].contiguous(), torch.gather(ci, 1, order[:, :k])


def _merge_cpu(run_s, run_i, blk_s, base):
    from .. import _C  # the compiled top-k merge

    _C.topk_merge(blk_s.numpy(), base, run_s.numpy(), run_i.numpy())
    return run_s, run_i


def _cpu_merge_available() -> bool:
    try:
        from .. import _C  # noqa: F401
    except ImportError:
        return False
    return True


def check_block_size(block_size, n: int) -> int | None:
    """``block_size`` (None or an int in ``1..MAX_BLOCK``), capped at ``n``: a block never
    holds more rows than the corpus, so an absurd size costs no memory."""
    if block_size is None:
        return None
    if isinstance(block_size, (bool, np.bool_)) or not isinstance(block_size, (int, np.integer)):
        raise TypeError(f"block_size must be an int, got {type(block_size).__name__} {block_size!r}")
    if not 1 <= block_size <= MAX_BLOCK:
        raise ValueError(f"block_size must be in 1..{MAX_BLOCK}, got {block_size}")
    return int(min(block_size, max(n, 1)))


def exact_search(qnets, vectors: torch.Tensor, k: int, *, backend: str = "auto",
                 block_size: int | None = None, num_threads: int | None = None,
                 scales: torch.Tensor | None = None):
    """Top-``k`` documents of ``vectors`` (n, d) for every q-net, best first.

    ``num_threads`` (validated by the caller): threads of the ``cpu`` backend's scan (None:
    the engine-wide number); other backends do not take it. ``scales`` (validated by the
    caller): the (n,) float32 row scales of int8 / float8_e4m3 ``vectors``, streamed with
    their rows; a backend that cannot read such rows raises ``ValueError``.

    Returns ``(scores, ids)``: (Q, k) float32 and (Q, k) int64 row indices on the q-nets'
    device; ties go to the lower index; slots beyond n hold score -inf and id -1.
    Blocks of a CPU (possibly memory-mapped) corpus are moved to the q-nets' device as
    they stream.
    """
    device = qnets.device
    Q, n = qnets.num_queries, vectors.shape[0]
    block_size = check_block_size(block_size, n)
    be = backends.get_backend(backend, device)
    block = block_size or min(DEFAULT_BLOCK, max(n, 1))
    extra = {}
    if scales is not None:
        backends.check_storage(be, vectors.dtype)
        extra["scales"] = scales
    if hasattr(be, "exact_topk") and vectors.device == device:
        if num_threads is not None and be.name == "cpu":
            extra["num_threads"] = num_threads
        if extra.get("scales") is not None and extra["scales"].device != device:
            extra["scales"] = extra["scales"].to(device)
        return be.exact_topk(qnets.weights, qnets.biases, qnets.config, vectors, k, block_size, **extra)

    run_s = torch.full((Q, k), float("-inf"), dtype=torch.float32, device=device)
    run_i = torch.full((Q, k), -1, dtype=torch.int64, device=device)
    merge = _merge_cpu if device.type == "cpu" and _cpu_merge_available() else _merge_torch
    buf = torch.empty((Q, block), dtype=torch.float32, device=device)
    for s in range(0, n, block):
        blk = vectors[s : s + block]
        if blk.device != device:
            blk = blk.to(device, non_blocking=True)
        # A contiguous output for every block, the ragged last one included.
        out = buf if blk.shape[0] == block else buf.new_empty((Q, blk.shape[0]))
        if scales is None:
            be.score_dense(qnets.weights, qnets.biases, qnets.config, blk, out)
        else:
            be.score_dense(qnets.weights, qnets.biases, qnets.config, blk, out,
                           scales=scales[s : s + block].to(device, non_blocking=True))
        run_s, run_i = merge(run_s, run_i, out, s)
    return run_s, run_i
