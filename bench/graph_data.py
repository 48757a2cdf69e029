"""Data for the graph benchmarks, with the slow parts (graphs, exact ground truth)
cached under /tmp so that reruns are quick."""

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
    if num_queries < q.num_queries:
        q = engine.QNet([w[:num_queries].contiguous() for w in q.weights],
                        [b[:num_queries].contiguous() for b in q.biases], q.config)
    return x, q


def synthetic(n: int, dim: int, layers: int, num_queries: int, *, seed: int = 0, dtype=torch.bfloat16):
    x = engine.synthetic.vectors(n, dim, seed=seed, dtype=dtype)
    q = engine.synthetic.qnets(num_queries, [dim] * (layers + 1) + [1], seed=seed + 1, corpus_seed=seed)
    return x, q


def index_with_graph(name: str, vectors: torch.Tensor, degree: int, **build_kwargs) -> engine.Index:
    """An in-memory index whose graph is built once and cached as a .npy file."""
    idx = engine.Index.from_vectors(vectors)
    f = _path(f"graph-{name}-R{degree}.npz")
    if os.path.exists(f):
        z = np.load(f, allow_pickle=False)
        params = {k[2:]: (z[k].item()) for k in z.files if k.startswith("p_")}
        idx.set_graph(torch.from_numpy(z["neighbors"]), params)
    else:
        t = time.perf_counter()
        idx.build_graph(degree, progress=True, **build_kwargs)
        print(f"built graph {name} R={degree} in {time.perf_counter() - t:.1f}s: {idx.graph_params}")
        np.savez(f, neighbors=idx.graph.numpy(),
                 **{f"p_{k}": np.asarray(v) for k, v in idx.graph_params.items()})
    return idx


def _qnet_key(q: engine.QNet) -> str:
    h = hashlib.sha1()
    for t in list(q.weights) + list(q.biases):
        h.update(t.float().contiguous().numpy().tobytes()[:1 << 20])
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
    sec = (time.perf_counter() - t) / q.num_queries
    np.savez(f, scores=r.scores.numpy(), ids=r.ids.numpy(), seconds=sec)
    return r.scores, r.ids, sec


def recall(found: torch.Tensor, truth: torch.Tensor, k: int) -> float:
    """Mean share of the exact top-k found in the first k results."""
    hits = 0
    for a, b in zip(found[:, :k].tolist(), truth[:, :k].tolist()):
        hits += len(set(a) & set(b))
    return hits / (k * truth.shape[0])
