"""Pieces shared by the graph searches: entry points, ordering, scoring, visited marks.

Every ordering in graph search is by score descending, then id ascending, so results do
not depend on the order in which candidates were met, on the device or on the batch.
"""

from __future__ import annotations

import numpy as np
import torch

from ..once import cached
from ..qnet import QNet
from .codes import corpus_mean as _corpus_mean

# Activations of one gather-scoring chunk stay under this many floats (64 MiB).
_CHUNK_ELEMS = 1 << 24


def entry_points(index, count: int, salt: int = 0) -> torch.Tensor:
    """``min(count, n)`` distinct documents drawn uniformly once per index, sorted by id.

    Fixed by the graph's seed (``index.graph_params["seed"]``), so the same index gives
    the same entry points in every run; cached on the index object (built once)."""
    n = len(index)
    count = min(int(count), n)
    seed = int(index.graph_params.get("seed", 0))

    def build():
        rng = np.random.default_rng([seed, salt, 0x6E7])
        ids = np.sort(rng.choice(n, size=count, replace=False)) if count < n else np.arange(n)
        return torch.from_numpy(ids.astype(np.int64))

    return cached(index, "_graph_entry_cache", (seed, count, salt, n), build)


def corpus_mean(index) -> torch.Tensor:
    """The corpus mean (float32, CPU): the codes' origin when the index has codes, else
    computed once and cached on the index."""
    if getattr(index, "codes", None) is not None:
        return index.codes.mean
    vectors = index.vectors
    rows = index.float_rows() if hasattr(index, "float_rows") else vectors
    return cached(index, "_graph_mean_cache", id(vectors), lambda: (vectors, _corpus_mean(rows)),
                  valid=lambda hit: hit[0] is vectors)[1]


def device_graph(index, device) -> torch.Tensor:
    """The graph as int64 on ``device`` for the torch searches, made once per graph and
    device and cached on the index (copying 8.8M x 32 ids per search would cost more
    than the search)."""
    device = torch.device(device)
    g = index.graph
    n = len(index)

    def build():
        if g.numel() and (int(g.min()) < -1 or int(g.max()) >= n):
            raise ValueError(f"graph holds a neighbour id outside [-1, {n})")
        stale = index.__dict__.get("_graph_device_cache", {})
        for key in [k for k, hit in stale.items() if hit[0] is not g]:
            del stale[key]  # one graph at a time: a replaced graph frees its copies
        return (g, g.to(device, torch.int64))

    return cached(index, "_graph_device_cache", (str(device), id(g)), build, valid=lambda hit: hit[0] is g)[1]


def sort_by_key(scores: torch.Tensor, ids: torch.Tensor, *extra: torch.Tensor):
    """Sort each row by score descending, ties by id ascending (padding, score -inf with
    id -1, goes last). Returns the sorted scores, ids and ``extra`` tensors."""
    big = torch.iinfo(torch.int64).max
    by_id = torch.argsort(torch.where(ids < 0, big, ids), dim=1, stable=True)
    s1 = torch.gather(scores, 1, by_id)
    order = torch.argsort(s1, dim=1, descending=True, stable=True)
    order = torch.gather(by_id, 1, order)
    return (torch.gather(scores, 1, order), torch.gather(ids, 1, order),
            *(torch.gather(e, 1, order) for e in extra))


def score_ids(be, qnets: QNet, vectors: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """q-net ``q`` on ``vectors[ids[q]]`` (``(Q, m)``, -1 = padding, scored -inf), in
    query chunks that bound the backend's gathered activations."""
    Q, m = ids.shape
    out = torch.full((Q, m), float("-inf"), dtype=torch.float32, device=ids.device)
    if m == 0 or Q == 0:
        return out
    valid = ids >= 0
    safe = torch.where(valid, ids, torch.zeros_like(ids))
    width = max(max(w.shape[1], w.shape[2]) for w in qnets.weights)
    qc = max(1, _CHUNK_ELEMS // max(1, m * width))
    for q0 in range(0, Q, qc):
        q1 = min(Q, q0 + qc)
        w = [t[q0:q1] for t in qnets.weights]
        b = [t[q0:q1] for t in qnets.biases]
        out[q0:q1] = be.score_gather(w, b, qnets.config, vectors, safe[q0:q1].contiguous(), None)
    return out.masked_fill_(~valid, float("-inf"))


def score_shared(be, qnets: QNet, vectors: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Every q-net on the same documents ``ids`` (1-D): one dense scoring, ``(Q, m)``."""
    if ids.numel() == 0:
        return torch.empty((qnets.num_queries, 0), dtype=torch.float32, device=vectors.device)
    return be.score_dense(qnets.weights, qnets.biases, qnets.config, vectors[ids].contiguous(), None)


def new_candidates(nbr: torch.Tensor, valid: torch.Tensor, visited: torch.Tensor, n: int):
    """Keep the neighbours not yet visited, each once per row, and mark them visited.

    ``nbr`` (Q, m) int64, ``valid`` (Q, m) bool, ``visited`` (Q, n + 1) bool whose last
    column absorbs padding. Returns ``(ids, count)``: (Q, m) ids sorted ascending, -1
    after the ``count[q]`` new ones."""
    ids = torch.where(valid & (nbr >= 0), nbr, torch.full_like(nbr, n))
    ids, _ = torch.sort(ids, dim=1)
    dup = torch.zeros_like(ids, dtype=torch.bool)
    dup[:, 1:] = ids[:, 1:] == ids[:, :-1]
    new = (ids < n) & ~dup & ~torch.gather(visited, 1, ids)
    ids = torch.where(new, ids, torch.full_like(ids, n))
    ids, _ = torch.sort(ids, dim=1)
    visited.scatter_(1, ids, True)
    count = new.sum(1)
    return torch.where(ids < n, ids, torch.full_like(ids, -1)), count
