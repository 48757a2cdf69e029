"""The paper's graph search (``preset="paper"``), batched over queries with torch ops.

Exactly the algorithm of the paper / official code (see ../shared/docs/hypencoder.md):

1. candidates = ``num_entry_points`` documents drawn once per index, all marked explored;
2. up to ``max_iter`` times: score every candidate; offer the best
   ``max(ncandidates, k)`` to a top-k heap (a push counts when it enters the heap); the
   graph neighbours of the best ``ncandidates`` that are not yet explored become the next
   candidates, marked explored; with ``early_stop``, stop after a step with no push;
3. return the heap, best first.

Batched form of the heap: offering a step's items best first to a bounded min-heap
leaves the top-k of everything offered, and a step pushes at least once exactly when the
heap is not full or its best item beats the heap's minimum (later items are worse, and
the minimum only rises). Ties are by lower id throughout.
"""

from __future__ import annotations

import torch

from .common import device_graph, entry_points, new_candidates, score_ids, score_shared, sort_by_key

PAPER_DEFAULTS = {"num_entry_points": 10_000, "ncandidates": 50, "max_iter": 16, "early_stop": True}


def paper_search_torch(index, qnets, k: int, be, *, num_entry_points: int, ncandidates: int,
                       max_iter: int, early_stop: bool):
    vectors = index.vectors
    dev = qnets.device
    Q, n = qnets.num_queries, len(index)
    g = device_graph(index, dev)
    entries = entry_points(index, num_entry_points).to(dev)
    visited = torch.zeros((Q, n + 1), dtype=torch.bool, device=dev)
    visited[:, entries] = True
    res_s = torch.full((Q, k), float("-inf"), device=dev)
    res_i = torch.full((Q, k), -1, dtype=torch.int64, device=dev)
    scored = torch.zeros(Q, dtype=torch.int64, device=dev)
    steps = torch.zeros(Q, dtype=torch.int64, device=dev)
    active = torch.ones(Q, dtype=torch.bool, device=dev)
    cand = entries.expand(Q, -1)
    top = max(ncandidates, k)
    for it in range(max_iter):
        if it == 0:  # every query starts from the same entry points: one dense scoring
            scores = score_shared(be, qnets, vectors, entries)
        else:
            scores = score_ids(be, qnets, vectors, cand)
        valid = cand >= 0
        scored += valid.sum(1)
        steps += active
        s, i = sort_by_key(scores, cand)
        s, i = s[:, :top], i[:, :top]
        best_s, best_i = s[:, 0], i[:, 0]
        min_s, min_i = res_s[:, -1], res_i[:, -1]
        pushed = (best_i >= 0) & ((min_i < 0) | (best_s > min_s) | ((best_s == min_s) & (best_i < min_i)))
        res_s, res_i = sort_by_key(torch.cat([res_s, s], 1), torch.cat([res_i, i], 1))
        res_s, res_i = res_s[:, :k].contiguous(), res_i[:, :k].contiguous()
        if early_stop:
            active = active & pushed
        if it == max_iter - 1:
            break
        ex = i[:, :ncandidates]
        nbr = g[ex.clamp_min(0)]  # (Q, nc, R)
        ok = (ex >= 0)[:, :, None] & active[:, None, None]
        cand, count = new_candidates(nbr.flatten(1), ok.expand_as(nbr).flatten(1), visited, n)
        active = active & (count > 0)  # nothing left to score: this query is done
        # One host synchronisation per step: termination and the next width.
        any_active, width = torch.stack([active.any().long(), count.max()]).tolist()
        if not any_active or width == 0:
            break
        cand = cand[:, :width]
    return res_s, res_i, {"documents_scored": scored, "steps": steps}
