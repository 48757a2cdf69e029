"""The default graph search: linearised candidate search, then q-net refinement.

A trained q-net is close to linear over the region of document space that matters
(../shared/docs/search-findings.md): its gradient ``w_q`` at the corpus mean ranks
documents by ``x . w_q`` much as the q-net does, and a dot product costs ``d`` MACs
against the q-net's ``sum(in_i * out_i)`` (hundreds of times more). So per query:

1. *Linearise*: ``w_q = grad qnet_q`` at the corpus mean (one forward and backward).
2. *Linear stage*: the ``ef_lin = lin_factor * ef`` documents with the largest
   ``x . w_q``. ``linear_search="scan"`` (default): an exact blocked matmul over the
   corpus, ``d`` MACs per document. ``"graph"``: best-first beam search on the L2 graph
   with that objective from the best of ``num_samples`` fixed sampled documents; on
   debian-minilm it found only 0.34-0.64 of the true linear top (an L2 kNN graph has few
   edges towards the extreme points a maximum-inner-product search wants), so it is an
   option, not the default.
3. *Q-net stage*: those ``ef_lin`` documents are scored by the q-net; a best-first beam
   search with the q-net itself on the same graph, candidate list ``ef``, refines them.
4. With ``passes=2``, re-linearise at each query's best document and repeat 2-3, keeping
   what was scored (a second look around the region the q-net prefers). The second
   linear stage does not scan the corpus again: the first scan keeps a shortlist, the
   top ``S = max(shortlist * n, 8 * ef_lin)`` documents by the first linearisation, and
   the second ranks only those by the new one (the two gradients are close, so the new
   linear top lies mostly inside a generous old one; see bench/RESULTS.md for the
   containment measured). At 1M x 768 bf16 a scan reads 1.5 GB, about a third of a
   two-pass query; the S rows gathered are a few percent of that. ``shortlist=0``
   rescans the whole corpus (the behaviour before the shortlist).

Beam search (both stages): a candidate list of at most ``ef`` scored documents sorted
best first; each step expands the ``width`` best unexpanded ones (neighbours not yet
visited are scored and merged, the list is cut back to ``ef``); a query stops when its
list has nothing left to expand or after ``max_steps`` steps. The speed/recall knob is
``ef``.
"""

from __future__ import annotations

import math

import torch

from ..backends import torch_ref
from .common import (device_graph, entry_points, linear_qnet, new_candidates, score_ids, score_shared,
                     sort_by_key)

BEAM_DEFAULTS = {
    "ef": 16,  # the knob: q-net candidate list; more = slower and better
    "lin_factor": 4.0,  # linear candidate list = lin_factor * ef documents
    "num_samples": 1024,  # fixed sampled documents the linear stage starts from
    "width": 4,  # documents expanded per step
    "max_steps": 256,
    "passes": 2,  # debian-minilm: recall@10 0.89 -> 0.99 at ef 32 for twice the work
    "linear_search": "scan",  # "scan": blocked matmul over all documents; "graph": beam
    "shortlist": 0.02,  # pass 2 ranks the first scan's top max(0.02 n, 8 ef_lin); 0: rescan all
}
LINEAR_SEARCHES = ("scan", "graph")


def corpus_mean(index) -> torch.Tensor:
    """Mean document vector (float32), computed once per index and cached on it."""
    m = index.__dict__.get("_graph_mean")
    if m is None:
        v = index.vectors
        acc = torch.zeros(v.shape[1], dtype=torch.float64, device=v.device)
        for s in range(0, v.shape[0], 1 << 16):
            acc += v[s : s + (1 << 16)].double().sum(0)
        m = (acc / max(1, v.shape[0])).float()
        index._graph_mean = m
    return m


def linearise(qnets, at: torch.Tensor) -> torch.Tensor:
    """Gradient of each q-net at ``at`` ((d,) shared or (Q, d) per query): (Q, d) float32."""
    Q, d = qnets.num_queries, qnets.dim
    x = at.float().expand(Q, d).reshape(Q, 1, d).clone().requires_grad_(True)
    with torch.enable_grad():
        w = [t.float() for t in qnets.weights]
        b = [t.float() for t in qnets.biases]
        s = torch_ref.apply_qnet(w, b, qnets.config, x)
        (g,) = torch.autograd.grad(s.sum(), x)
    return g.reshape(Q, d).detach()


def beam_torch(be, qnets, vectors, graph, ef: int, width: int, max_steps: int, *,
               shared_entries=None, entries=None, init=None, visited=None):
    """Batched best-first beam search with torch ops (any device).

    Starts from ``shared_entries`` (1-D, the same for every query), ``entries`` ((Q, m),
    -1 padding) and ``init`` (already scored ``(scores, ids)``); documents marked in
    ``visited`` ((Q, n+1) bool) are never scored again. Returns the sorted list
    ``(scores, ids)`` ((Q, ef), -inf/-1 padding), visited, and per-query
    ``(scored, steps)``.
    """
    Q, n = qnets.num_queries, vectors.shape[0]
    dev = vectors.device
    if visited is None:
        visited = torch.zeros((Q, n + 1), dtype=torch.bool, device=dev)
    parts_s, parts_i = [], []
    scored = torch.zeros(Q, dtype=torch.int64, device=dev)
    if init is not None:
        if shared_entries is not None:
            raise ValueError("pass shared_entries or init, not both")
        parts_s.append(init[0]), parts_i.append(init[1])
        visited.scatter_(1, torch.where(init[1] >= 0, init[1], n), True)
    if shared_entries is not None and shared_entries.numel():
        e = shared_entries.to(dev)
        parts_s.append(score_shared(be, qnets, vectors, e))
        parts_i.append(e.expand(Q, -1))
        visited[:, e] = True
        scored += e.numel()
    if entries is not None and entries.numel():
        valid = entries >= 0
        ids, count = new_candidates(entries, valid, visited, n)
        parts_s.append(score_ids(be, qnets, vectors, ids))
        parts_i.append(ids)
        scored += count
    ls, li = sort_by_key(torch.cat(parts_s, 1), torch.cat(parts_i, 1))
    if ls.shape[1] < ef:
        pad = ef - ls.shape[1]
        ls = torch.cat([ls, ls.new_full((Q, pad), float("-inf"))], 1)
        li = torch.cat([li, li.new_full((Q, pad), -1)], 1)
    ls, li = ls[:, :ef].contiguous(), li[:, :ef].contiguous()
    expanded = torch.zeros_like(li, dtype=torch.bool)
    steps = torch.zeros(Q, dtype=torch.int64, device=dev)
    g = graph
    for _ in range(max_steps):
        open_ = ~expanded & (li >= 0)
        active = open_.any(1)
        # Positions of the `width` best unexpanded entries (the list is sorted).
        pos = torch.argsort((~open_).to(torch.int8), dim=1, stable=True)[:, :width]
        sel = torch.gather(open_, 1, pos)
        expanded.scatter_(1, pos, torch.gather(expanded, 1, pos) | sel)
        nbr = g[torch.gather(li, 1, pos).clamp_min(0)]  # (Q, width, R)
        ok = sel[:, :, None].expand_as(nbr)
        ids, count = new_candidates(nbr.flatten(1), ok.flatten(1), visited, n)
        any_active, m = torch.stack([active.any().long(), count.max()]).tolist()
        if not any_active:
            break
        steps += active
        if m == 0:
            continue
        ids = ids[:, :m]
        s = score_ids(be, qnets, vectors, ids)
        scored += count
        cs, ci, ce = sort_by_key(torch.cat([ls, s], 1), torch.cat([li, ids], 1),
                                 torch.cat([expanded, torch.zeros_like(ids, dtype=torch.bool)], 1))
        ls, li, expanded = cs[:, :ef].contiguous(), ci[:, :ef].contiguous(), ce[:, :ef].contiguous()
    return ls, li, visited, scored, steps


def linear_scan(vectors: torch.Tensor, w: torch.Tensor, m: int, block: int | None = None) -> torch.Tensor:
    """Ids ``(Q, m)`` of the documents with the largest ``x . w_q`` (exact, blocked: one
    matmul per block of documents, d MACs per document and query), ties by lower id.

    Blocks are as large as a score budget allows (on CUDA 2^27 scores: the whole 8.8M
    corpus in one matmul at batch 1), each keeps its own best ``m``, and one sort merges
    them at the end: a handful of kernels per query instead of a merge per 2^17 rows."""
    Q, n = w.shape[0], vectors.shape[0]
    m = min(m, n)
    if block is None:
        budget = 1 << (27 if vectors.device.type == "cuda" else 24)
        block = max(1 << 17, budget // max(1, Q))
    parts_s, parts_i = [], []
    for s0 in range(0, n, block):
        xb = vectors[s0 : s0 + block]
        if xb.device.type == "cuda" and xb.dtype != torch.float32:  # tensor cores
            sc = (w.to(xb.dtype) @ xb.T).float()
        else:
            sc = w @ xb.float().T
        if sc.shape[1] > m:  # the block's own best m: all that can reach the top m
            sc, pos = torch.topk(sc, m, dim=1, sorted=False)
            ids = pos + s0
        else:
            ids = torch.arange(s0, s0 + xb.shape[0], device=w.device).expand(Q, -1)
        parts_s.append(sc)
        parts_i.append(ids)
    if not parts_s:
        return torch.full((Q, 0), -1, dtype=torch.int64, device=w.device)
    run_s, run_i = sort_by_key(torch.cat(parts_s, 1), torch.cat(parts_i, 1))
    return run_i[:, :m]


def rows_topk_torch(vectors: torch.Tensor, ids: torch.Tensor, w: torch.Tensor, m: int,
                    budget: int = 1 << 25) -> torch.Tensor:
    """Ids ``(Q, min(m, S))`` of the rows among ``ids[q]`` ((Q, S), distinct) with the
    largest ``x . w_q``, ties by lower id: the torch twin of ``native.rows_topk``. Queries
    go in groups of at most ``budget`` gathered elements (64 queries x 64,000 rows x 768
    in float32 at once would be 12 GB)."""
    Q, S = ids.shape
    m = min(m, S)
    if S == 0:
        return ids[:, :0]
    step = max(1, budget // max(1, S * vectors.shape[1]))
    out = []
    for q0 in range(0, Q, step):
        xi, wq = ids[q0 : q0 + step], w[q0 : q0 + step]
        xs = vectors[xi]  # (q, S, d)
        if xs.device.type == "cuda" and xs.dtype != torch.float32:  # tensor cores
            sc = torch.bmm(xs, wq.to(xs.dtype)[:, :, None])[:, :, 0].float()
        else:
            sc = torch.bmm(xs.float(), wq[:, :, None].float())[:, :, 0]
        _, oi = sort_by_key(sc, xi)
        out.append(oi[:, :m])
    return torch.cat(out)


def scan_matrix(index) -> torch.Tensor:
    """The corpus as the torch linear scan reads it: on the CPU a float32 copy, made once
    and cached on the index (converting half-precision blocks on every query cost more
    than the dot products themselves); on CUDA the vectors as they are (tensor cores).
    The C++ path (``impl="native"``) reads the stored dtype directly instead."""
    v = index.vectors
    if v.device.type != "cpu" or v.dtype == torch.float32:
        return v
    m = index.__dict__.get("_graph_scan_f32")
    if m is None:
        m = torch.empty(v.shape, dtype=torch.float32)
        for s0 in range(0, v.shape[0], 1 << 16):
            m[s0 : s0 + (1 << 16)] = v[s0 : s0 + (1 << 16)].float()
        index._graph_scan_f32 = m
    return m


def _beam(impl, be, qnets, index, graph, ef, width, max_steps, **start):
    """One beam search by either implementation (identical semantics)."""
    if impl == "native":
        from . import native

        return native.beam_search(qnets, index, ef, width, max_steps, **start)
    s, i, _, scored, steps = beam_torch(be, qnets, index.vectors, graph, ef, width, max_steps, **start)
    return s, i, scored, steps


def shortlist_size(n: int, ef_lin: int, shortlist: float) -> int:
    """Rows the first scan keeps for the second pass (0: none, the second pass rescans)."""
    if shortlist <= 0:
        return 0
    return min(n, max(int(math.ceil(shortlist * n)), 8 * ef_lin))


def default_search(index, qnets, k: int, be, *, impl: str, ef: int, lin_factor: float,
                   num_samples: int, width: int, max_steps: int, passes: int, linear_search: str,
                   shortlist: float = 0.0):
    if passes not in (1, 2):
        raise ValueError(f"passes must be 1 or 2, got {passes}")
    if linear_search not in LINEAR_SEARCHES:
        raise ValueError(f"linear_search must be one of {LINEAR_SEARCHES}, got {linear_search!r}")
    vectors = index.vectors
    dev = qnets.device
    graph = device_graph(index, dev) if impl == "torch" else index.graph
    ef_q = max(ef, k)
    ef_lin = max(ef_q, int(math.ceil(lin_factor * ef)))
    samples = entry_points(index, num_samples, salt=1).to(dev)
    at = corpus_mean(index).to(dev)
    lin_scored = q_scored = steps = 0
    best = None  # (scores, ids) of the q-net stage so far
    lin_ids = None
    n = len(index)
    # The shortlist only pays when a second pass will use it.
    S = shortlist_size(n, ef_lin, shortlist) if passes > 1 and linear_search == "scan" else 0
    short = None  # (Q, S) ids: the first scan's top S by the first linearisation
    for p in range(passes):
        w = linearise(qnets, at)
        if linear_search == "scan":
            if impl == "native":
                from . import native
            if short is not None:  # rank the shortlist by the new linearisation only
                if impl == "native":
                    lin_ids = native.rows_topk(index, short, w, ef_lin)
                else:
                    lin_ids = rows_topk_torch(scan_matrix(index), short, w, ef_lin)
                rows = short.shape[1]
            else:
                m = max(S, ef_lin)
                if impl == "native":
                    lin_ids = native.linear_topk(index, w, m)
                else:
                    lin_ids = linear_scan(scan_matrix(index), w, m)
                if S:
                    short = lin_ids.to(dev)
                # The top S are sorted best first, so their head is the top ef_lin.
                lin_ids = lin_ids[:, :ef_lin].contiguous()
                rows = n
            lin_scored = lin_scored + torch.full((qnets.num_queries,), rows, dtype=torch.int64, device=dev)
        else:
            lq = linear_qnet(w, qnets.config)
            if p == 0:
                start = {"shared_entries": samples}
            else:  # start from what the previous pass found, under the new linearisation
                start = {"entries": torch.cat([lin_ids, best[1]], 1)}
            _, lin_ids, sc, st = _beam(impl, be, lq, index, graph, ef_lin, width, max_steps, **start)
            lin_scored, steps = lin_scored + sc, steps + st
        bs, bi, sc, st = _beam(impl, be, qnets, index, graph, ef_q, width, max_steps,
                               entries=lin_ids, init=best)
        q_scored, steps = q_scored + sc, steps + st
        best = (bs, bi)
        if p + 1 < passes:
            # Re-linearise where the q-net is best; a query that found nothing keeps the mean.
            top = bi[:, 0]
            at = torch.where((top >= 0)[:, None], vectors[top.clamp_min(0)].float(),
                             at.expand(len(top), -1))
    s, i = best[0][:, :k].contiguous(), best[1][:, :k].contiguous()
    return s, i, {"documents_scored": q_scored, "linear_scored": lin_scored, "steps": steps}
