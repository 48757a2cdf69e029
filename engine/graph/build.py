"""Build the L2 k-nearest-neighbour graph of a corpus.

``exact``: blocked brute force with torch (CPU or CUDA): distances of a block of rows to
every document, the document itself excluded by position (not by distance, so duplicates
of it stay eligible), ties broken by the lower id. ``faiss``: an IVF-Flat index searched
with ``R + 1`` neighbours, the document itself removed by id. ``cluster`` (the ``auto``
choice for large corpora, CPU or CUDA): k-means clusters, exact matmuls between each cluster
and its nearest clusters; approximate, minutes instead of hours at 1M x 768 on 2 cores.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..quant import DequantizedRows

METHODS = ("auto", "exact", "faiss", "cluster")
# Above this many documents method="auto" builds by clusters: exact brute force is
# O(n^2 d): about 1 min at 60k x 384 on 2 cores, 15 at 200k x 768, hours at 1M, and
# about 40 min of fp32 H100 time at 8.8M.
EXACT_CPU_LIMIT = 64_000
EXACT_CUDA_LIMIT = 2_000_000
# Principal directions the automatic CPU cluster build measures distances in (see
# bench/RESULTS.md for the neighbour recall and the search recall this gives).
AUTO_CPU_DIMS = 96


def _check_degree(degree, n: int) -> int:
    if isinstance(degree, bool) or not isinstance(degree, (int, np.integer)):
        raise TypeError(f"degree must be an int, got {type(degree).__name__}")
    if degree <= 0:
        raise ValueError(f"degree must be positive, got {degree}")
    return int(degree)


def _finish(nbr: torch.Tensor, degree: int) -> torch.Tensor:
    """Pad with -1 to ``degree`` columns (corpora with fewer than degree + 1 documents)."""
    n, r = nbr.shape
    if r < degree:
        nbr = torch.cat([nbr, torch.full((n, degree - r), -1, dtype=nbr.dtype)], dim=1)
    return nbr.to(torch.int32).contiguous()


def _smallest(dist: torch.Tensor, ids: torch.Tensor, r: int):
    """The ``r`` smallest distances of each row with their ids, ties by lower id.

    The ``r + 1`` smallest come from topk (a full sort of every row is slow). Where the
    ``r``-th and ``(r+1)``-th are equal (a tie across the cut: duplicates), that row's
    elements up to the tied value are re-ranked by (distance, id) on their own.
    """
    r = min(r, dist.shape[1])
    top = min(r + 1, dist.shape[1])
    vals, pos = torch.topk(dist, top, dim=1, largest=False, sorted=True)
    cand = torch.gather(ids, 1, pos)
    out_v, out_i = vals[:, :r].clone(), cand[:, :r].clone()
    if top > r:
        for row in torch.nonzero(vals[:, r] == vals[:, r - 1]).flatten().tolist():
            sel = torch.nonzero(dist[row] <= vals[row, r]).flatten()
            rv, ri = dist[row, sel], ids[row, sel]
            by_id = torch.argsort(ri)
            rv, ri = rv[by_id], ri[by_id]
            order = torch.argsort(rv, stable=True)[:r]
            out_v[row], out_i[row] = rv[order], ri[order]
    # Order every row by (distance, id): topk leaves equal distances in any order.
    by_id = torch.argsort(out_i, dim=1)
    out_v, out_i = torch.gather(out_v, 1, by_id), torch.gather(out_i, 1, by_id)
    order = torch.argsort(out_v, dim=1, stable=True)
    return torch.gather(out_v, 1, order), torch.gather(out_i, 1, order)


_COL_BLOCK = 1 << 16


def exact_knn(vectors: torch.Tensor, degree: int, *, block_size: int = 1024,
              device=None, progress: bool = False) -> torch.Tensor:
    """Exact ``(n, min(degree, n-1))`` int64 neighbours computed on ``device`` (default:
    the vectors' device), nearest first, ties by lower id; returned on the CPU."""
    n = vectors.shape[0]
    device = torch.device(device) if device is not None else vectors.device
    r = min(degree, n - 1)
    out = torch.empty((n, max(r, 0)), dtype=torch.int64)
    if r <= 0:
        return out
    data = vectors.to(device)
    if n <= _COL_BLOCK:  # small: convert once instead of per block
        data = data.float()
    norms = torch.empty(n, dtype=torch.float32, device=device)
    for s in range(0, n, _COL_BLOCK):
        norms[s : s + _COL_BLOCK] = data[s : s + _COL_BLOCK].float().pow(2).sum(1)
    rows = range(0, n, block_size)
    if progress:
        from tqdm import tqdm

        rows = tqdm(rows, desc="knn graph (exact)", unit="block")
    for s in rows:
        xb = data[s : s + block_size].float()
        b = xb.shape[0]
        best_d = best_i = None
        for c in range(0, n, _COL_BLOCK):
            yc = data[c : c + _COL_BLOCK].float()
            # |x|^2 is the same along a row, so |y|^2 - 2 x.y ranks like the distance.
            dist = torch.addmm(norms[None, c : c + yc.shape[0]], xb, yc.T, beta=1.0, alpha=-2.0)
            ids = torch.arange(c, c + yc.shape[0], device=device).expand(b, -1)
            # The document itself is excluded by position, never by its distance value.
            lo, hi = max(s, c), min(s + b, c + yc.shape[0])
            if lo < hi:
                r_idx = torch.arange(lo, hi, device=device)
                dist[r_idx - s, r_idx - c] = float("inf")
            if best_d is not None:
                dist = torch.cat([best_d, dist], 1)
                ids = torch.cat([best_i, ids], 1)
            best_d, best_i = _smallest(dist, ids, r)
        out[s : s + b] = best_i.cpu()
    return out


def faiss_knn(vectors: torch.Tensor, degree: int, *, nlist: int | None = None,
              nprobe: int | None = None, batch_size: int = 16384, seed: int = 0,
              progress: bool = False) -> tuple[torch.Tensor, dict]:
    """Approximate neighbours with a faiss IVF-Flat index (CPU)."""
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss is an optional extra
        raise RuntimeError("method='faiss' needs faiss-cpu: pip install faiss-cpu") from e
    n, d = vectors.shape
    r = min(degree, n - 1)
    # About sqrt(n) lists with 8 probed: the graph only needs to navigate, so a neighbour
    # recall around 0.9 is enough, and training and search stay affordable on a few cores.
    nlist = int(nlist or max(1, min(n // 64, int(math.sqrt(n)))))
    nprobe = int(nprobe or max(1, min(nlist, 8)))
    if nlist <= 0 or nprobe <= 0:
        raise ValueError("nlist and nprobe must be positive")
    quant = faiss.IndexFlatL2(d)
    index = faiss.IndexIVFFlat(quant, d, nlist, faiss.METRIC_L2)
    rng = np.random.default_rng(seed)
    train_n = min(n, max(nlist * 50, 20_000))
    train_ids = np.sort(rng.choice(n, size=train_n, replace=False))
    index.cp.seed = seed
    index.train(np.ascontiguousarray(vectors[torch.from_numpy(train_ids)].float().numpy()))
    for s in range(0, n, 1 << 16):
        index.add(np.ascontiguousarray(vectors[s : s + (1 << 16)].float().numpy()))
    index.nprobe = nprobe
    out = np.empty((n, max(r, 0)), dtype=np.int64)
    rows = range(0, n, batch_size)
    if progress:
        from tqdm import tqdm

        rows = tqdm(rows, desc="knn graph (faiss ivf)", unit="batch")
    for s in rows:
        x = np.ascontiguousarray(vectors[s : s + batch_size].float().numpy())
        dist, ids = index.search(x, r + 1)
        own = np.arange(s, s + x.shape[0])[:, None]
        # Drop the document itself by id (a duplicate of it may come first), keep order.
        drop = ids == own
        order = np.argsort(drop, axis=1, kind="stable")[:, :r]
        row = np.take_along_axis(ids, order, 1)
        row[np.take_along_axis(drop, order, 1)] = -1
        out[s : s + x.shape[0]] = row
    return torch.from_numpy(out), {"nlist": nlist, "nprobe": nprobe, "train_size": int(train_n)}


def _f32(vectors: torch.Tensor, ids=None, device=None) -> torch.Tensor:
    x = vectors if ids is None else vectors[ids.to(vectors.device)]
    return x.to(device if device is not None else x.device).float().contiguous()


def _nearest(vectors: torch.Tensor, cent: torch.Tensor, block: int = 1 << 15) -> torch.Tensor:
    """Index of the nearest centroid (L2) of every row, on the centroids' device."""
    cn = cent.pow(2).sum(1)
    out = torch.empty(vectors.shape[0], dtype=torch.int64, device=cent.device)
    for s in range(0, vectors.shape[0], block):
        xb = _f32(vectors[s : s + block], device=cent.device)
        out[s : s + xb.shape[0]] = torch.addmm(cn[None], xb, cent.T, alpha=-2.0).argmin(1)
    return out


def kmeans_torch(x: torch.Tensor, nlist: int, *, niter: int = 10, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means of the float32 rows ``x`` on their own device: ``(nlist, d)``
    centroids. Starts from ``nlist`` distinct rows drawn with ``seed``; an emptied
    cluster keeps its centroid. For CUDA and for CPUs without faiss."""
    if not 1 <= nlist <= x.shape[0]:
        raise ValueError(f"k-means needs 1 <= nlist <= training rows, got {nlist} clusters for {x.shape[0]} rows")
    g = torch.Generator().manual_seed(seed)
    cent = x[torch.randperm(x.shape[0], generator=g)[:nlist].to(x.device)].clone()
    for _ in range(niter):
        a = _nearest(x, cent)
        sums = torch.zeros_like(cent).index_add_(0, a, x)
        cnt = torch.bincount(a, minlength=nlist).to(x.dtype)[:, None]
        cent = torch.where(cnt > 0, sums / cnt.clamp_min(1.0), cent)
    return cent


def _kmeans(train: torch.Tensor, nlist: int, niter: int, seed: int, kmeans: str):
    """``(centroids, the k-means used)``."""
    if kmeans not in ("auto", "faiss", "torch"):
        raise ValueError(f"kmeans must be 'auto', 'faiss' or 'torch', got {kmeans!r}")
    if kmeans == "auto":
        kmeans = "torch"
        if train.device.type == "cpu":
            try:
                import faiss  # noqa: F401

                kmeans = "faiss"
            except ImportError:
                pass
    if kmeans == "torch":
        return kmeans_torch(train, nlist, niter=niter, seed=seed), kmeans
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss is an optional extra
        raise RuntimeError("kmeans='faiss' needs faiss-cpu: pip install faiss-cpu") from e
    km = faiss.Kmeans(train.shape[1], nlist, niter=niter, seed=seed, max_points_per_centroid=1 << 30,
                      min_points_per_centroid=1, verbose=False)
    km.train(train.cpu().numpy())
    return torch.from_numpy(km.centroids.copy()).to(train.device), kmeans


# Above this many clusters k-means runs in two levels (sqrt(nlist) coarse clusters, each
# split in proportion to its size): one level would cost n x nlist distances to assign.
_TWO_LEVEL = 1024


def _clusters(vectors, nlist: int, train_n: int, niter: int, seed: int, kmeans: str, dev):
    """``(centroids (c, d), assignment (n,) int64 on dev, the k-means used)``."""
    n = vectors.shape[0]
    rng = np.random.default_rng(seed)
    train_ids = torch.from_numpy(np.sort(rng.choice(n, size=train_n, replace=False)))
    if nlist <= _TWO_LEVEL:
        cent, kmeans = _kmeans(_f32(vectors, train_ids, dev), nlist, niter, seed, kmeans)
        return cent, _nearest(vectors, cent), kmeans
    top = int(math.ceil(math.sqrt(nlist)))
    cent0, kmeans = _kmeans(_f32(vectors, train_ids, dev), top, niter, seed, kmeans)
    a0 = _nearest(vectors, cent0)
    order = torch.argsort(a0, stable=True)
    sizes = torch.bincount(a0, minlength=top).cpu().tolist()
    cents, assign = [], torch.empty(n, dtype=torch.int64, device=dev)
    start = base = 0
    for t in range(top):
        mem = order[start : start + sizes[t]]
        start += sizes[t]
        if mem.numel() == 0:
            continue
        k = max(1, min(mem.numel(), int(round(nlist * mem.numel() / n))))
        sub = mem[torch.from_numpy(np.sort(rng.choice(mem.numel(), size=min(mem.numel(), 64 * k),
                                                      replace=False))).to(mem.device)]
        c, _ = _kmeans(_f32(vectors, sub, dev), k, niter, seed + 1 + t, kmeans) if k > 1 else (
            _f32(vectors, sub, dev).mean(0, keepdim=True), kmeans)
        assign[mem] = _nearest(_f32(vectors, mem, dev), c) + base
        cents.append(c)
        base += c.shape[0]
    return torch.cat(cents), assign, kmeans


def cluster_knn(vectors: torch.Tensor, degree: int, *, nlist: int | None = None, nprobe: int = 3,
                train_size: int | None = None, niter: int = 10, seed: int = 0,
                kmeans: str = "auto", device=None, block_size: int = 4096,
                progress: bool = False) -> tuple[torch.Tensor, dict]:
    """Approximate neighbours by clusters, computed on ``device`` (default: the vectors').

    k-means on a sample puts every document in one of ``nlist`` clusters (by default one
    per 1,000 documents; in two levels above 1,024 clusters); the members of
    a cluster look for their neighbours among the members of the ``nprobe`` clusters
    whose centroids are nearest to its own, by exact blocked matmuls (``block_size``
    members at a time). A faiss IVF index probes per document instead, but scans its
    lists one query at a time: on 2 cores that ran at about 1 GMAC/s against tens in a
    matmul, hours instead of minutes at 1M x 768. ``kmeans``: ``"faiss"``, ``"torch"``
    (:func:`kmeans_torch`, any device) or ``"auto"`` (faiss on CPU when installed).
    The document itself is excluded by id, ties by lower id.
    """
    n, d = vectors.shape
    dev = torch.device(device) if device is not None else vectors.device
    r = min(degree, n - 1)
    if r <= 0:
        return torch.full((n, max(r, 0)), -1, dtype=torch.int64), {"nlist": 0, "nprobe": 0, "train_size": 0}
    # Clusters of about 1,000: a cluster's matmul against its probes stays a few MB.
    nlist = int(nlist or max(1, int(round(n / 1000))))
    if nlist <= 0 or nprobe <= 0 or niter <= 0 or block_size <= 0:
        raise ValueError("nlist, nprobe, niter and block_size must be positive")
    nlist = min(nlist, n)
    nprobe = min(int(nprobe), nlist)
    two_level = nlist > _TWO_LEVEL
    train_n = int(min(n, train_size or 64 * (int(math.ceil(math.sqrt(nlist))) if two_level else nlist)))
    if train_n < (int(math.ceil(math.sqrt(nlist))) if two_level else nlist):
        raise ValueError(f"train_size ({train_n}) must be at least nlist ({nlist})")
    cent, assign, kmeans = _clusters(vectors, nlist, train_n, niter, seed, kmeans, dev)
    nlist = cent.shape[0]
    nprobe = min(nprobe, nlist)
    # Clusters probed by each cluster: the nprobe nearest centroids, itself first.
    cd = torch.cdist(cent, cent)
    cd.fill_diagonal_(-1.0)
    probes = torch.topk(cd, nprobe, dim=1, largest=False).indices.cpu().tolist()
    order = torch.argsort(assign, stable=True)  # members of each cluster, ids ascending
    bounds = [0] + torch.cumsum(torch.bincount(assign, minlength=nlist), 0).cpu().tolist()
    members = [order[bounds[c] : bounds[c + 1]] for c in range(nlist)]
    out = torch.full((n, r), -1, dtype=torch.int64, device=dev)
    clusters = range(nlist)
    if progress:
        from tqdm import tqdm

        clusters = tqdm(clusters, desc="knn graph (clusters)", unit="cluster")
    for c in clusters:
        if members[c].numel() == 0:
            continue
        cand = torch.cat([members[p] for p in probes[c]])
        xc = _f32(vectors, cand, dev)
        cn = xc.pow(2).sum(1)[None]
        for s in range(0, members[c].numel(), block_size):
            mine = members[c][s : s + block_size]
            dist = torch.addmm(cn, _f32(vectors, mine, dev), xc.T, alpha=-2.0)
            ids = cand.expand(mine.numel(), -1)
            # The document itself is excluded by id (its duplicates stay eligible).
            dist.masked_fill_(ids == mine[:, None], float("inf"))
            vals, best = _smallest(dist, ids, r)
            # Fewer than r other documents within reach: the excluded self is never listed.
            out[mine, : best.shape[1]] = best.masked_fill(torch.isinf(vals), -1)
    params = {"nlist": nlist, "nprobe": nprobe, "train_size": train_n, "niter": niter, "kmeans": kmeans}
    return out.cpu(), params


def project(vectors: torch.Tensor, dims: int, *, seed: int = 0, train_size: int = 131_072,
            device=None, progress: bool = False) -> torch.Tensor:
    """``(n, dims)`` float32 coordinates of ``vectors`` on their top ``dims`` principal
    directions (from a sample), computed chunk by chunk on ``device``."""
    from .codes import corpus_mean, principal_axes

    dev = torch.device(device) if device is not None else vectors.device
    mean = corpus_mean(vectors)
    P, _ = principal_axes(vectors, mean, train_size, seed)
    P = P[:, :dims].to(dev)
    mean = mean.to(dev)
    out = torch.empty((vectors.shape[0], dims), dtype=torch.float32, device=dev)
    starts = range(0, vectors.shape[0], 1 << 16)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=f"project to {dims} dims", unit="chunk")
    for s in starts:
        out[s : s + (1 << 16)] = (vectors[s : s + (1 << 16)].to(dev, torch.float32) - mean) @ P
    return out


def build_knn_graph(vectors: torch.Tensor, degree: int, *, method: str = "auto",
                    block_size: int = 1024, device=None, progress: bool = False,
                    seed: int = 0, dims: int | None = None, **faiss_options) -> tuple[torch.Tensor, dict]:
    """The ``degree`` nearest other documents of every document by L2.

    Args:
        vectors: ``(n, d)`` corpus (any float dtype, CPU or CUDA).
        degree: neighbours per document ``R``; rows are padded with -1 when the corpus
            has ``n <= R`` documents.
        method: ``"exact"``, ``"faiss"`` (IVF-Flat, CPU), ``"cluster"`` (see
            :func:`cluster_knn`) or ``"auto"`` (exact up to ``EXACT_CPU_LIMIT``
            documents on CPU and ``EXACT_CUDA_LIMIT`` on CUDA, cluster above).
        seed: also fixes the graph search's entry points for this index.
        dims: measure distances between the coordinates on the top ``dims`` principal
            directions instead of the full vectors (approximate neighbours, d / dims times
            less arithmetic); ``None``: full vectors, except that ``method="auto"`` on the
            CPU above ``EXACT_CPU_LIMIT`` documents uses ``AUTO_CPU_DIMS``.

    Returns:
        ``(neighbors, params)``: ``(n, degree)`` int32 on the CPU, nearest first, never a
        document itself; ``params`` (JSON-serialisable) for the manifest.
    """
    if not isinstance(vectors, (torch.Tensor, DequantizedRows)) or vectors.dim() != 2:
        raise TypeError("vectors must be a 2-D torch.Tensor (or engine.quant.DequantizedRows)")
    n = vectors.shape[0]
    degree = _check_degree(degree, n)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    dev = torch.device(device) if device is not None else vectors.device
    if method == "auto":
        limit = EXACT_CUDA_LIMIT if dev.type == "cuda" else EXACT_CPU_LIMIT
        method = "exact" if n <= limit else "cluster"
        if method == "cluster" and dev.type == "cpu" and dims is None and vectors.shape[1] > AUTO_CPU_DIMS:
            dims = AUTO_CPU_DIMS
    if dims is not None:
        if isinstance(dims, bool) or not isinstance(dims, (int, np.integer)) or not 1 <= dims <= vectors.shape[1]:
            raise ValueError(f"dims must be an int in [1, {vectors.shape[1]}], got {dims!r}")
    if faiss_options and method not in ("faiss", "cluster"):
        raise TypeError(f"unexpected options for an exact build: {sorted(faiss_options)}")
    t0 = time.perf_counter()
    params = {"metric": "l2", "degree": degree, "method": method, "seed": int(seed)}
    if dims is not None and dims < vectors.shape[1]:
        vectors = project(vectors, int(dims), seed=seed, device=dev, progress=progress)
        params["dims"] = int(dims)
    if method == "exact":
        nbr = exact_knn(vectors, degree, block_size=block_size, device=dev, progress=progress)
    else:
        if method == "faiss":
            nbr, extra = faiss_knn(vectors, degree, seed=seed, progress=progress, **faiss_options)
        else:
            nbr, extra = cluster_knn(vectors, degree, seed=seed, progress=progress, device=dev,
                                     block_size=block_size, **faiss_options)
        params.update(extra)
    params["build_seconds"] = round(time.perf_counter() - t0, 3)
    return _finish(nbr, degree), params
