"""Data for the graph benchmarks, with the slow parts (indexes with their graphs, exact
ground truth) cached under /tmp so that reruns are quick."""

from __future__ import annotations

import hashlib
import os
import time

import numpy as np
import torch

import engine

CACHE = os.environ.get("HYP_BENCH_CACHE", "/tmp/hyp_graph_bench")
DEBIAN = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "debian-minilm")


def _path(name: str) -> str:
    os.makedirs(CACHE, exist_ok=True)
    return os.path.join(CACHE, name)


def debian(num_queries: int = 64):
    """(vectors f16 (58285, 384), q-nets float32 of the stored dev queries)."""
    x = torch.from_numpy(np.load(os.path.join(DEBIAN, "docs.f16.npy")))
    q = engine.QNet.load(os.path.join(DEBIAN, "qnets.dev64.safetensors"), dtype=torch.float32)
    return x, q[:num_queries]


def synthetic(n: int, dim: int, layers: int, num_queries: int, *, seed: int = 0, dtype=torch.bfloat16):
    """(vectors, q-nets); bf16 vectors are generated once and memory-mapped from /tmp."""
    if dtype == torch.bfloat16:
        f = _path(f"syn{n}x{dim}-s{seed}.bf16.npy")
        if not os.path.exists(f):
            x = engine.synthetic.vectors(n, dim, seed=seed, dtype=dtype)
            np.save(f + ".part.npy", x.view(torch.uint16).numpy())
            os.replace(f + ".part.npy", f)
        x = torch.from_numpy(np.load(f, mmap_mode="r+")).view(torch.bfloat16)
    else:
        x = engine.synthetic.vectors(n, dim, seed=seed, dtype=dtype)
    q = engine.synthetic.qnets(num_queries, [dim] * (layers + 1) + [1], seed=seed + 1, corpus_seed=seed)
    return x, q


def index_with_graph(name: str, vectors: torch.Tensor, degree: int, **build_kwargs) -> engine.Index:
    """An index with its graph and candidate codes, built once and saved under the cache."""
    path = _path(f"index-{name}-R{degree}")
    if not os.path.exists(os.path.join(path, "manifest.json")):
        t = time.perf_counter()
        idx = engine.Index.from_vectors(vectors).build_graph(degree, progress=True, **build_kwargs)
        print(f"built graph {name} R={degree} in {time.perf_counter() - t:.1f}s: {idx.graph_params}")
        idx.save(path)
    return engine.Index.load(path)


def _qnet_key(q: engine.QNet) -> str:
    h = hashlib.sha1()
    for t in list(q.weights) + list(q.biases):
        h.update(t.float().contiguous().cpu().numpy().tobytes()[:1 << 20])
        h.update(str(tuple(t.shape)).encode())
    return h.hexdigest()[:12]


def exact_truth(name: str, idx: engine.Index, q: engine.QNet, k: int = 100):
    """Exact top-k (scores, ids) and seconds per query, cached per q-net batch."""
    f = _path(f"truth-{name}-{_qnet_key(q)}-k{k}.npz")
    if os.path.exists(f):
        z = np.load(f)
        return torch.from_numpy(z["scores"]), torch.from_numpy(z["ids"]), float(z["seconds"])
    t = time.perf_counter()
    r = idx.search(q, k, mode="exact")
    scores, ids = r.scores.cpu(), r.ids.cpu()
    sec = (time.perf_counter() - t) / q.num_queries
    np.savez(f, scores=scores.numpy(), ids=ids.numpy(), seconds=sec)
    return scores, ids, sec


def recall(found: torch.Tensor, truth: torch.Tensor, k: int) -> float:
    """Mean share of the exact top-k found in the first k results."""
    hits = 0
    for a, b in zip(found[:, :k].tolist(), truth[:, :k].tolist()):
        hits += len(set(a) & set(b))
    return hits / (k * truth.shape[0])


def graph_recall(idx: engine.Index, rows: int = 1000, seed: int = 0) -> float:
    """Share of the exact R nearest other documents that the graph lists, on ``rows``
    sampled documents (exact distances by blocked matmul against the whole corpus)."""
    g = idx.graph
    n, r = g.shape
    rng = np.random.default_rng(seed)
    dev = idx.vectors.device
    sample = torch.from_numpy(np.sort(rng.choice(n, size=min(rows, n), replace=False))).to(dev)
    q = idx.vectors[sample].float()
    best_d = torch.full((len(sample), 0), float("inf"), device=dev)
    best_i = torch.full((len(sample), 0), -1, dtype=torch.int64, device=dev)
    for s in range(0, n, 1 << 16):
        xb = idx.vectors[s : s + (1 << 16)].float()
        d = torch.addmm(xb.pow(2).sum(1)[None], q, xb.T, alpha=-2.0)
        ids = torch.arange(s, s + xb.shape[0], device=dev).expand(len(sample), -1)
        d = d.masked_fill(ids == sample[:, None], float("inf"))
        d, ids = torch.cat([best_d, d], 1), torch.cat([best_i, ids], 1)
        best_d, pos = torch.topk(d, min(r, d.shape[1]), dim=1, largest=False)
        best_i = torch.gather(ids, 1, pos)
    hits = sum(len(set(a) & set(b)) for a, b in zip(g[sample.cpu()].tolist(), best_i.tolist()))
    return hits / best_i.numel()
