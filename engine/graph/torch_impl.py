"""The torch implementation of graph search: the same presets as :mod:`.native`, with
the same names, arguments and semantics, in batched torch ops on any device (the GPU
path, and the CPU path for ``backend="torch"``). Q-nets are scored through the chosen
backend's ``score_gather`` / ``score_dense``.

It also holds the torch twins of the native interface operations: ``linear_topk`` (exact
top-m by ``x . w``), ``rows_topk`` (the same over given rows), ``codes_topk`` (code
estimates, then an exact re-rank) and the beam search. Every ordering is (score desc, id
asc), as in csrc/ranking.h; the results equal the native ones up to float rounding.
"""

from __future__ import annotations

import torch

from .common import (corpus_mean, device_graph, entry_points, new_candidates, score_ids, score_shared,
                     sort_by_key)
from .codes import RESIDUAL_UNITS
from .linearize import linearize
from ..native_args import precision_scope

NAME = "torch"


def _allowed(allow, ids):
    """Whether each id (-1: padding, not allowed) is in ``allow`` ((1 or Q, n) bool)."""
    a = allow.expand(ids.shape[0], -1) if allow.shape[0] == 1 else allow
    return torch.gather(a, 1, ids.clamp_min(0)) & (ids >= 0)


def linear_topk(vectors: torch.Tensor, w: torch.Tensor, m: int, block: int | None = None,
                allow: torch.Tensor | None = None) -> torch.Tensor:
    """Ids ``(Q, min(m, n))`` of the rows with the largest ``x . w_q``, best first, ties by
    lower id: blocks as large as a score budget allows, each keeping its best m, one merge.
    ``allow`` ((1 or Q, n) bool): only allowed rows, -1 padding after them."""
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
        ids = torch.arange(s0, s0 + xb.shape[0], device=w.device).expand(Q, -1)
        if allow is not None:
            ok = allow[:, s0 : s0 + xb.shape[0]].expand(Q, -1)
            sc, ids = sc.masked_fill(~ok, float("-inf")), torch.where(ok, ids, torch.full_like(ids, -1))
        if sc.shape[1] > m:  # the block's own best m (by key): all that can reach the top m
            sc, ids = sort_by_key(sc, ids)
            sc, ids = sc[:, :m], ids[:, :m]
        parts_s.append(sc)
        parts_i.append(ids)
    if not parts_s:
        return torch.full((Q, 0), -1, dtype=torch.int64, device=w.device)
    _, run_i = sort_by_key(torch.cat(parts_s, 1), torch.cat(parts_i, 1))
    return run_i[:, :m]


def rows_topk(vectors: torch.Tensor, ids: torch.Tensor, w: torch.Tensor, m: int,
              budget: int = 1 << 25) -> torch.Tensor:
    """Ids ``(Q, min(m, S))`` of the rows among ``ids[q]`` ((Q, S), distinct; -1 padding,
    kept last) with the largest ``x . w_q``, best first, ties by lower id; queries in
    groups of at most ``budget`` gathered elements."""
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
        sc = sc.masked_fill(xi < 0, float("-inf"))
        _, oi = sort_by_key(sc, xi)
        out.append(oi[:, :m])
    return torch.cat(out)


def codes_topk(codes, vectors: torch.Tensor, w: torch.Tensor, rerank: int, m: int,
               allow: torch.Tensor | None = None, residual_rows: int = 0) -> torch.Tensor:
    """Ids ``(Q, min(m, n))``: the ``rerank`` best code estimates of ``x . w_q`` (ties by
    lower id), re-ranked by their exact ``x . w_q``; with ``allow``, of the allowed rows
    only (-1 padding after them). With the codes' second level and ``residual_rows >
    rerank``, the estimates ranked are those of both levels (``RESIDUAL_UNITS`` x table
    sum + the bits' sum, integers) over the ``residual_rows`` best table sums (n < 2^33)."""
    n = vectors.shape[0]
    rerank = min(n, max(rerank, m))
    lut, scale = codes.lut_and_scale(w)
    sums = codes.sums(lut).double()
    ids = torch.arange(n, device=w.device).expand(w.shape[0], -1)
    if allow is not None:
        ok = allow.expand(w.shape[0], -1)
        sums, ids = sums.masked_fill(~ok, float("-inf")), torch.where(ok, ids, torch.full_like(ids, -1))
    s, cand = sort_by_key(sums, ids)
    if codes.residual is not None and residual_rows > rerank and n < 1 << 33:
        first = min(n, residual_rows)
        s, cand = s[:, :first], cand[:, :first]
        g = codes.residual_table(w, scale).double()  # (Q, r)
        est = s * RESIDUAL_UNITS  # + the bits' sums: integers, exact in float64
        for q in range(w.shape[0]):  # one query's (first, r) bits at a time
            est[q] += codes.residual.unpacked(cand[q].clamp_min(0)).double() @ g[q]
        _, cand = sort_by_key(est.masked_fill(cand < 0, float("-inf")), cand)
    return rows_topk(vectors, cand[:, :rerank].contiguous(), w, m)


def beam(be, qnets, vectors, graph, ef: int, width: int, max_steps: int, *, entries=None, state=None,
         allow=None):
    """Batched best-first beam search (twin of the Beam of csrc/graph/default_search.cpp).

    ``entries`` ((Q, m), -1 padding): documents to score and merge first (visited ones are
    skipped). ``state``: a previous call's state to continue from. ``allow`` ((1 or Q, n)
    bool): the walk goes through every document, the results hold the allowed ones.
    Returns the state ``(scores, ids, expanded, visited, result scores, result ids)``
    ((Q, ef) each but visited (Q, n + 1), -inf/-1 padding; the results are the list
    itself without ``allow``) and per-query ``(scored, steps)``.
    """
    Q, n = qnets.num_queries, vectors.shape[0]
    dev = vectors.device
    if state is None:
        ls = torch.full((Q, ef), float("-inf"), device=dev)
        li = torch.full((Q, ef), -1, dtype=torch.int64, device=dev)
        ex = torch.zeros((Q, ef), dtype=torch.bool, device=dev)
        visited = torch.zeros((Q, n + 1), dtype=torch.bool, device=dev)
        rs, ri = ls.clone(), li.clone()
    else:
        ls, li, ex, visited, rs, ri = state
    scored = torch.zeros(Q, dtype=torch.int64, device=dev)
    steps = torch.zeros(Q, dtype=torch.int64, device=dev)

    def merge(ids, count):
        nonlocal ls, li, ex, rs, ri
        s = score_ids(be, qnets, vectors, ids)
        cs, ci, ce = sort_by_key(torch.cat([ls, s], 1), torch.cat([li, ids], 1),
                                 torch.cat([ex, torch.zeros_like(ids, dtype=torch.bool)], 1))
        ls, li, ex = cs[:, :ef].contiguous(), ci[:, :ef].contiguous(), ce[:, :ef].contiguous()
        if allow is not None:
            ok = _allowed(allow, ids)
            cs, ci = sort_by_key(torch.cat([rs, s.masked_fill(~ok, float("-inf"))], 1),
                                 torch.cat([ri, torch.where(ok, ids, torch.full_like(ids, -1))], 1))
            rs, ri = cs[:, :ef].contiguous(), ci[:, :ef].contiguous()
        return count

    if entries is not None and entries.numel():
        ids, count = new_candidates(entries, entries >= 0, visited, n)
        m = int(count.max())
        if m:
            scored += merge(ids[:, :m], count)
    for _ in range(max_steps):
        open_ = ~ex & (li >= 0)
        active = open_.any(1)
        # The `width` best unexpanded entries (the list is sorted).
        pos = torch.argsort((~open_).to(torch.int8), dim=1, stable=True)[:, :width]
        sel = torch.gather(open_, 1, pos)
        ex.scatter_(1, pos, torch.gather(ex, 1, pos) | sel)
        nbr = graph[torch.gather(li, 1, pos).clamp_min(0)]  # (Q, width, R)
        ok = sel[:, :, None].expand_as(nbr)
        ids, count = new_candidates(nbr.flatten(1), ok.flatten(1), visited, n)
        any_active, m = torch.stack([active.any().long(), count.max()]).tolist()
        if not any_active:
            break
        steps += active
        if m:
            scored += merge(ids[:, :m], count)
    if allow is None:
        rs, ri = ls, li
    return (ls, li, ex, visited, rs, ri), scored, steps


def _direction(qnets, at):
    """Gradients at ``at`` with the relaxed fallback: (w, ok, fell_back)."""
    w, ok = linearize(qnets, at)
    fell = ~ok
    if bool(fell.any()):
        w2, ok2 = linearize(qnets, at, relaxed=True)
        w = torch.where(ok[:, None], w, w2)
        ok = ok | ok2
    return w, ok, fell


def _default_search(index, qnets, k: int, p, use_codes: bool, bf16: bool, be, allow=None):
    exact_qnets = qnets
    if bf16 and qnets.dtype != torch.bfloat16:
        qnets = qnets.to(dtype=torch.bfloat16)  # candidates scored in bf16, the final list exactly
    vectors = index.vectors
    dev = qnets.device
    Q, n = qnets.num_queries, len(index)
    graph = device_graph(index, dev)
    ef_q, ef_lin = max(p.ef, k), p.ef_lin()
    keep = p.shortlist_rows(n) if p.passes > 1 else ef_lin
    zero = torch.zeros(Q, dtype=torch.int64, device=dev)
    w, ok, fell = _direction(qnets, corpus_mean(index).to(dev))
    if allow is not None:
        allow = allow.to(dev)
    if use_codes:
        residual = index.codes.residual is not None
        rerank = p.rerank_rows(n, keep, residual)
        lin = codes_topk(index.codes.to(dev), vectors, w, rerank, keep, allow=allow,
                         residual_rows=p.residual_rows_(n, keep) if residual else 0)
        linear_rows = zero + min(n, rerank)
        coded_rows = zero + n
    else:
        lin = linear_topk(vectors, w, keep, allow=allow)
        linear_rows, coded_rows = zero + n, zero
    linear_rows, coded_rows = linear_rows * ok, coded_rows * ok
    samples = entry_points(index, p.num_samples, salt=1).to(dev)
    width = max(ef_lin, samples.numel())
    entries = torch.full((Q, width), -1, dtype=torch.int64, device=dev)
    entries[:, : min(ef_lin, lin.shape[1])] = lin[:, :ef_lin]
    if not bool(ok.all()):  # no direction at all: start from the fixed sample of documents
        entries[~ok] = -1
        entries[~ok, : samples.numel()] = samples
    state, scored, steps = beam(be, qnets, vectors, graph, ef_q, p.width, p.max_steps, entries=entries, allow=allow)
    if p.passes > 1 and lin.shape[1]:
        best = state[1][:, 0]
        go = ok & (best >= 0)
        if bool(go.any()):
            w2, ok2, _ = _direction(qnets, vectors[best.clamp_min(0)].float())
            go = go & ok2
            second = rows_topk(vectors, lin, w2, ef_lin)
            second = torch.where(go[:, None], second, torch.full_like(second, -1))
            linear_rows = linear_rows + go * lin.shape[1]
            state, sc2, st2 = beam(be, qnets, vectors, graph, ef_q, p.width, p.max_steps, entries=second,
                                   state=state, allow=allow)
            scored, steps = scored + sc2, steps + st2
    rs, ri = state[4], state[5]
    if qnets is not exact_qnets:
        with precision_scope("fp32"):  # the returned scores in float32 arithmetic
            rs = score_ids(be, exact_qnets, vectors, ri)
        rs, ri = sort_by_key(rs, ri)
    s, i = rs[:, :k].contiguous(), ri[:, :k].contiguous()
    if s.shape[1] < k:
        s = torch.cat([s, s.new_full((Q, k - s.shape[1]), float("-inf"))], 1)
        i = torch.cat([i, i.new_full((Q, k - i.shape[1]), -1)], 1)
    counters = {"documents_scored": scored, "steps": steps, "linear_rows": linear_rows,
                "coded_rows": coded_rows, "fallback": fell.long()}
    return s, i, counters


def _paper_search(index, qnets, k: int, p, be, allow=None):
    """The paper's algorithm (see csrc/graph/search.h), batched over queries.

    Batched form of its heap: offering a step's items best first to a bounded min-heap
    leaves the top-k of everything offered, and a step pushes at least once exactly when
    the heap is not full or its best item beats the heap's minimum."""
    vectors = index.vectors
    dev = qnets.device
    Q, n = qnets.num_queries, len(index)
    g = device_graph(index, dev)
    entries = entry_points(index, p.num_entry_points).to(dev)
    visited = torch.zeros((Q, n + 1), dtype=torch.bool, device=dev)
    visited[:, entries] = True
    res_s = torch.full((Q, k), float("-inf"), device=dev)
    res_i = torch.full((Q, k), -1, dtype=torch.int64, device=dev)
    scored = torch.zeros(Q, dtype=torch.int64, device=dev)
    steps = torch.zeros(Q, dtype=torch.int64, device=dev)
    active = torch.ones(Q, dtype=torch.bool, device=dev)
    cand = entries.expand(Q, -1)
    top = max(p.ncandidates, k)
    for it in range(p.max_iter):
        if cand.shape[1] == 0:
            break
        if it == 0:  # every query starts from the same entry points: one dense scoring
            scores = score_shared(be, qnets, vectors, entries)
        else:
            scores = score_ids(be, qnets, vectors, cand)
        valid = cand >= 0
        scored += valid.sum(1)
        steps += active
        s, i = sort_by_key(scores, cand)
        s, i = s[:, :top], i[:, :top]
        rs_, ri_ = s, i
        if allow is not None:  # results from the allowed items offered; the walk goes on through all
            ok = _allowed(allow, i)
            rs_, ri_ = sort_by_key(s.masked_fill(~ok, float("-inf")), torch.where(ok, i, torch.full_like(i, -1)))
        best_s, best_i = rs_[:, 0], ri_[:, 0]
        min_s, min_i = res_s[:, -1], res_i[:, -1]
        pushed = (best_i >= 0) & ((min_i < 0) | (best_s > min_s) | ((best_s == min_s) & (best_i < min_i)))
        res_s, res_i = sort_by_key(torch.cat([res_s, rs_], 1), torch.cat([res_i, ri_], 1))
        res_s, res_i = res_s[:, :k].contiguous(), res_i[:, :k].contiguous()
        if p.early_stop:
            active = active & pushed
        if it == p.max_iter - 1:
            break
        ex = i[:, : p.ncandidates]
        nbr = g[ex.clamp_min(0)]  # (Q, nc, R)
        okm = (ex >= 0)[:, :, None] & active[:, None, None]
        cand, count = new_candidates(nbr.flatten(1), okm.expand_as(nbr).flatten(1), visited, n)
        active = active & (count > 0)  # nothing left to score: this query is done
        # One host synchronisation per step: termination and the next width.
        any_active, width = torch.stack([active.any().long(), count.max()]).tolist()
        if not any_active or width == 0:
            break
        cand = cand[:, :width]
    zero = torch.zeros(Q, dtype=torch.int64, device=dev)
    return res_s, res_i, {"documents_scored": scored, "steps": steps, "linear_rows": zero, "coded_rows": zero,
                          "fallback": zero}


# The CPU backend's precision policy would compute half-precision inputs in bf16; graph
# search sets its precision itself: float32 arithmetic except the candidates of
# ``bf16=True`` (scored with bf16 q-nets), like the native implementation.
def paper_search(index, qnets, k: int, p, be, allow=None):
    with precision_scope("fp32"):
        return _paper_search(index, qnets, k, p, be, None if allow is None else allow.to(qnets.device))


def default_search(index, qnets, k: int, p, use_codes: bool, bf16: bool, be, allow=None):
    with precision_scope("bf16" if bf16 else "fp32"):
        return _default_search(index, qnets, k, p, use_codes, bf16, be, allow)
