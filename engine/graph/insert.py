"""Insert documents into a built neighbour graph, and take deleted ones out of it, under
the build's rule (:mod:`engine.graph.build`): every document lists its ``R`` nearest
other documents by L2, nearest first, ties by the lower id.

Inserting ``m`` documents: each new document gets its ``R`` nearest among the documents
before it, and every earlier document whose list it enters (it is nearer than the last
one) takes it in, dropping its farthest. ``method="exact"`` compares every new document
with every earlier one (what the exact build computes, O(m n d)); ``"search"`` finds the
new document's neighbours by a beam search in L2 over the graph (``ef`` candidates, from
fixed entry points) and offers it to the documents of that beam only: O(m ef R d),
approximate like the cluster build. Lists are compared as ``|y|^2 - 2 x.y`` in float32
(``|x|^2`` is the same along a list), as the build does; an index whose graph was built
on projected coordinates (``params["dims"]``) gets neighbours by the full vectors.

Removing deleted documents (compaction): a list that held a deleted document is rebuilt
from its live neighbours and the live neighbours of its deleted ones (two hops), the
``R`` nearest by the same rule; lists without a deleted document stay as they are.
"""

from __future__ import annotations

import numpy as np
import torch

from .build import EXACT_CPU_LIMIT, _smallest

INSERT_METHODS = ("auto", "exact", "search")
_EXACT_CHUNK = 1024
_SEARCH_CHUNK = 256
_COL_BLOCK = 1 << 16
_ENTRY_POINTS = 1024
_INF = float("inf")


def _select(piece, rows: torch.Tensor) -> torch.Tensor:
    """Rows of a tensor or of an :class:`engine.quant.DequantizedRows` view, as float32."""
    if isinstance(piece, torch.Tensor):
        return torch.index_select(piece, 0, rows).float()
    return piece[rows]


class Rows:
    """Read access to a corpus held in pieces (the stored rows, then the new ones) as
    float32, without concatenating them. A piece is a tensor or a view that dequantises
    the rows it is sliced for (:meth:`engine.index.Index.float_rows`)."""

    def __init__(self, *pieces: torch.Tensor):
        self.pieces = [p for p in pieces if p.shape[0]]
        self.starts = np.cumsum([0] + [p.shape[0] for p in self.pieces]).tolist()
        self.n = self.starts[-1]
        self.d = int(pieces[0].shape[1])

    def slice(self, a: int, b: int) -> torch.Tensor:
        out = [p[max(a, lo) - lo : min(b, hi) - lo].float()
               for p, lo, hi in zip(self.pieces, self.starts, self.starts[1:]) if a < hi and b > lo]
        return torch.cat(out) if len(out) > 1 else (out[0] if out else torch.empty(0, self.d))

    def take(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids`` (any shape, int64) -> float32 ``(*ids.shape, d)``; a -1 reads some row
        (callers mask it)."""
        flat = ids.reshape(-1).clamp_min(0)
        if len(self.pieces) == 1 or (flat.numel() and int(flat.max()) < self.starts[1]):
            return _select(self.pieces[0], flat).reshape(*ids.shape, self.d)
        out = torch.empty((flat.numel(), self.d), dtype=torch.float32)
        for p, lo, hi in zip(self.pieces, self.starts, self.starts[1:]):
            sel = torch.nonzero((flat >= lo) & (flat < hi)).flatten()
            if sel.numel():
                out[sel] = _select(p, flat[sel] - lo)
        return out.reshape(*ids.shape, self.d)

    def sqnorms(self, a: int, b: int, chunk: int = 1 << 16) -> torch.Tensor:
        return torch.cat([self.slice(s, min(b, s + chunk)).pow(2).sum(1) for s in range(a, b, chunk)]) \
            if b > a else torch.empty(0)


def _dist_to(rows: Rows, norms: torch.Tensor, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``|y|^2 - 2 x.y`` of each row ``x[i]`` (b, d) to the documents ``ids[i]`` (b, c);
    inf where ``ids`` is -1."""
    y = rows.take(ids)  # (b, c, d)
    dot = torch.bmm(y, x[:, :, None])[:, :, 0]
    d = norms[ids.clamp_min(0)] - 2.0 * dot
    return d.masked_fill_(ids < 0, _INF)


def _drop_repeats(ids: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
    """``dist`` with every repeat of an id in its row (after the first) and every -1 set to inf."""
    srt, perm = torch.sort(ids, dim=1, stable=True)
    rep = torch.zeros_like(srt, dtype=torch.bool)
    rep[:, 1:] = srt[:, 1:] == srt[:, :-1]
    mask = torch.zeros_like(rep).scatter_(1, perm, rep) | (ids < 0)
    return dist.masked_fill(mask, _INF)


def _best(ids: torch.Tensor, dist: torch.Tensor, r: int, distinct: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``r`` nearest of each row by (distance, id), -1 / inf where fewer exist
    (``distinct``: no id repeats within a row, -1 entries already at inf)."""
    if not distinct:
        dist = _drop_repeats(ids, dist)
    if dist.shape[1] < r:
        pad = r - dist.shape[1]
        dist = torch.cat([dist, torch.full((dist.shape[0], pad), _INF)], 1)
        ids = torch.cat([ids, torch.full((ids.shape[0], pad), -1, dtype=ids.dtype)], 1)
    # Unreachable entries rank last with the largest ids, so they never tie with a real one.
    big = torch.iinfo(torch.int64).max
    ids = torch.where(torch.isinf(dist), torch.full_like(ids, big), ids)
    d, i = _smallest(dist, ids, r)
    return torch.where(torch.isinf(d), torch.full_like(i, -1), i), d


class _Lists:
    """The graph being updated: ``(n, R)`` neighbour lists (nearest first) and their
    distances, computed the first time a list takes a new entry. Whether a document
    enters a list needs only the list's last distance, kept apart: testing every earlier
    document costs one distance each (O(n d)), not R (O(n R d))."""

    def __init__(self, rows: Rows, norms: torch.Tensor, graph: torch.Tensor, n: int):
        r = graph.shape[1]
        self.rows, self.norms, self.r = rows, norms, r
        self.ids = torch.full((n, r), -1, dtype=torch.int64)
        self.ids[: graph.shape[0]] = graph.long()
        self.dist = torch.full((n, r), float("nan"))
        self.last = torch.full((n,), float("nan"))  # distance to the last (farthest) entry

    def ensure(self, u: torch.Tensor, chunk: int = 4096) -> None:
        todo = u[torch.isnan(self.dist[u, 0])].unique()
        for s in range(0, todo.numel(), chunk):
            t = todo[s : s + chunk]
            self.dist[t] = _dist_to(self.rows, self.norms, self.rows.take(t), self.ids[t])

    def worst(self, u: torch.Tensor, chunk: int = 1 << 15) -> torch.Tensor:
        todo = u[torch.isnan(self.last[u])].unique()
        for s in range(0, todo.numel(), chunk):
            t = todo[s : s + chunk]
            self.last[t] = _dist_to(self.rows, self.norms, self.rows.take(t), self.ids[t, -1:])[:, 0]
        return self.last[u]

    def offer(self, u: torch.Tensor, v: torch.Tensor, d: torch.Tensor) -> None:
        """Offer document ``v[i]`` at distance ``d[i]`` to the list of ``u[i]``: it enters
        when nearer than the list's last, the list keeping its ``R`` nearest."""
        if u.numel() == 0:
            return
        keep = d < self.worst(u)
        u, v, d = u[keep], v[keep], d[keep]
        if u.numel() == 0:
            return
        # Group by list, nearest first, ties by id; a list takes at most R new entries.
        o = torch.argsort(v, stable=True)
        o = o[torch.argsort(d[o], stable=True)]
        o = o[torch.argsort(u[o], stable=True)]
        u, v, d = u[o], v[o], d[o]
        lists, first, counts = torch.unique_consecutive(u, return_inverse=True, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(u.numel()) - starts[first]
        sel = rank < self.r
        new_i = torch.full((lists.numel(), self.r), -1, dtype=torch.int64)
        new_d = torch.full((lists.numel(), self.r), _INF)
        new_i[first[sel], rank[sel]] = v[sel]
        new_d[first[sel], rank[sel]] = d[sel]
        self.ensure(lists)
        ids, dist = _best(torch.cat([self.ids[lists], new_i], 1), torch.cat([self.dist[lists], new_d], 1), self.r)
        self.ids[lists], self.dist[lists], self.last[lists] = ids, dist, dist[:, -1]


def _beam_search(rows: Rows, norms: torch.Tensor, lists: _Lists, x: torch.Tensor, limit: int,
                 entries: torch.Tensor, ef: int, width: int = 4, max_steps: int = 256):
    """Approximate ``ef`` nearest of each row of ``x`` among documents ``0..limit-1``:
    a beam search in L2 over their lists from ``entries``, each document scored once per
    row (a visited mark); ``(ids, dist)`` (b, ef)."""
    b = x.shape[0]
    d0 = torch.addmm(norms[entries][None], x, rows.take(entries).T, alpha=-2.0)
    ef = min(ef, entries.numel())
    bd, pos = torch.topk(d0, ef, dim=1, largest=False, sorted=True)
    bi = entries[pos]
    expanded = torch.zeros_like(bi, dtype=torch.bool)
    visited = torch.zeros((b, limit + 1), dtype=torch.bool)  # the last column absorbs padding
    visited[:, entries] = True
    w = min(width, ef)
    for _ in range(max_steps):
        sd, sp = torch.topk(torch.where(expanded, _INF, bd), w, dim=1, largest=False)
        active = torch.isfinite(sd)
        act = torch.nonzero(active.any(1)).flatten()
        if act.numel() == 0:
            break
        active, sp = active[act], sp[act]
        exp_a = expanded[act].scatter_(1, sp, True)
        expanded[act] = exp_a
        nodes = torch.where(active, torch.gather(bi[act], 1, sp), -1)
        nb = lists.ids[nodes.clamp_min(0)]  # (a, w, R)
        nb = torch.where(active[:, :, None] & (nb >= 0) & (nb < limit), nb, limit).reshape(act.numel(), -1)
        # Keep each document once: not visited before, not twice in this step.
        nb, _ = torch.sort(nb, dim=1)
        rep = torch.zeros_like(nb, dtype=torch.bool)
        rep[:, 1:] = nb[:, 1:] == nb[:, :-1]
        vis = visited[act]
        fresh = ~rep & ~torch.gather(vis, 1, nb) & (nb < limit)
        vis.scatter_(1, nb, True)
        visited[act] = vis
        nb = torch.where(fresh, nb, -1)
        dn = _dist_to(rows, norms, x[act], nb)
        d_all = torch.cat([bd[act], dn], 1)
        top, pos = torch.topk(d_all, ef, dim=1, largest=False, sorted=True)
        bd[act] = top
        bi[act] = torch.gather(torch.cat([bi[act], nb], 1), 1, pos)
        expanded[act] = torch.gather(torch.cat([exp_a, torch.zeros_like(nb, dtype=torch.bool)], 1), 1, pos)
    return torch.where(torch.isinf(bd), -1, bi), bd


def insert(rows: Rows, graph: torch.Tensor, *, method: str = "auto", ef: int = 64, seed: int = 0) -> torch.Tensor:
    """The graph of the corpus ``rows`` (n documents) from ``graph``, the lists of its
    first ``graph.shape[0]`` documents: the others inserted in order, in chunks.

    Args:
        rows: the whole corpus (:class:`Rows`).
        graph: ``(n_old, R)`` int32/int64 lists of the first documents.
        method: ``"exact"``, ``"search"`` or ``"auto"`` (exact while the corpus is within
            the exact build's limit, ``EXACT_CPU_LIMIT``, as the build chooses).
        ef: beam width of ``"search"`` (at least R).
        seed: fixes the search's entry points.

    Returns:
        ``(n, R)`` int32 lists.
    """
    if method not in INSERT_METHODS:
        raise ValueError(f"method must be one of {INSERT_METHODS}, got {method!r}")
    n_old, r = graph.shape
    n = rows.n
    if method == "auto":
        method = "exact" if n <= EXACT_CPU_LIMIT else "search"
    ef = max(int(ef), r)
    norms = rows.sqnorms(0, n)
    lists = _Lists(rows, norms, graph, n)
    step = _EXACT_CHUNK if method == "exact" else _SEARCH_CHUNK
    for s in range(n_old, n, step):
        e = min(n, s + step)
        x = rows.slice(s, e)
        b = e - s
        own = torch.arange(s, e)
        # The chunk's documents among themselves, exactly (the document itself excluded).
        cd = torch.addmm(norms[s:e][None], x, x.T, alpha=-2.0)
        cd.fill_diagonal_(_INF)
        best_i, best_d = _best(own.expand(b, -1).clone(), cd, r)
        if s > 0 and method == "exact":
            for c in range(0, s, _COL_BLOCK):
                ce = min(s, c + _COL_BLOCK)
                dist = torch.addmm(norms[c:ce][None], x, rows.slice(c, ce).T, alpha=-2.0)
                ids = torch.arange(c, ce).expand(b, -1)
                # Columns of different blocks are different documents: no repeats to drop.
                best_i, best_d = _best(torch.cat([best_i, ids], 1), torch.cat([best_d, dist], 1), r, distinct=True)
                # Seen from the earlier document u: |v|^2 - 2 u.v.
                du = dist - norms[c:ce][None] + norms[s:e][:, None]
                vi, ui = torch.nonzero(du < lists.worst(torch.arange(c, ce))[None], as_tuple=True)
                lists.offer(ui + c, vi + s, du[vi, ui])
        elif s > 0:
            rng = np.random.default_rng([seed, s, 0x1A5E])
            k = min(_ENTRY_POINTS, s)
            entries = torch.from_numpy(np.sort(rng.choice(s, size=k, replace=False)).astype(np.int64))
            bi, bdist = _beam_search(rows, norms, lists, x, s, entries, ef)
            best_i, best_d = _best(torch.cat([best_i, bi], 1), torch.cat([best_d, bdist], 1), r)
            ok = bi >= 0
            vi = own[:, None].expand_as(bi)[ok]
            ui = bi[ok]
            lists.offer(ui, vi, bdist[ok] - norms[ui] + norms[vi])
        lists.ids[s:e], lists.dist[s:e], lists.last[s:e] = best_i, best_d, best_d[:, -1]
    return lists.ids.to(torch.int32).contiguous()


def remove(rows: Rows, graph: torch.Tensor, live: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """The lists of the ``live`` documents (bool (n,)) of ``graph`` (n, R), renumbered in
    order: lists that held a deleted document rebuilt from two hops (see the module)."""
    n, r = graph.shape
    g = graph.long().clone()
    valid = g >= 0
    dead_nb = valid & ~live[g.clamp_min(0)]
    affected = torch.nonzero(live & dead_nb.any(1)).flatten()
    norms = torch.zeros(n)
    for s in range(0, affected.numel(), chunk):
        a = affected[s : s + chunk]
        own = g[a]
        dead = dead_nb[a]
        two = g[torch.where(dead, own, 0)]  # (a, R, R): neighbours of each neighbour
        two = torch.where(dead[:, :, None], two, -1).reshape(a.numel(), -1)
        cand = torch.cat([torch.where(dead, -1, own), two], 1)
        cand = torch.where((cand >= 0) & (cand != a[:, None]), cand, -1)
        cand = torch.where(live[cand.clamp_min(0)], cand, -1)
        uniq = cand[cand >= 0].unique()
        norms[uniq] = rows.take(uniq).pow(2).sum(1)
        dist = _dist_to(rows, norms, rows.take(a), cand)
        g[a] = _best(cand, dist, r)[0]
    new_id = torch.cumsum(live.long(), 0) - 1
    out = g[live]
    return torch.where(out >= 0, new_id[out.clamp_min(0)], -1).to(torch.int32).contiguous()
