"""Incremental updates on the Debian set: add throughput, graph recall after adds against a
rebuild, delete latency and compaction time.

The index is built on the first 90% of a seeded permutation of the corpus (graph degree
32 and codes, as bench_scale builds it); the other 10% are added in batches of
``--batch`` (in memory, and on disk to an index opened with Index.load, memory-mapped),
by each insertion method. The baseline, in the same run: the index rebuilt on 100% of the
same rows in the same order. Recall@10 / @100 of the default graph search (ef 16 and 64)
over the 64 stored dev q-nets is against the q-nets' exact top-100 over the full corpus
in float32 arithmetic. Then 1% of the ids are deleted on disk in batches of 100 (delete
latency per call) and the index is compacted (its time).

    python -m bench.bench_update [--batch 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

import engine
from engine.native_args import precision_scope

from .bench_scale import DEBIAN, machine, recall, table

EFS = (16, 64)


def truth_of(idx, q, k: int = 100) -> torch.Tensor:
    with precision_scope("fp32"):
        return torch.cat([idx.search(q[i], k).ids for i in range(q.num_queries)])


def recalls(idx, q, truth) -> dict:
    out = {}
    for ef in EFS:
        found = idx.search(q, 100, mode="graph", ef=ef).ids
        out[f"R@10 ef{ef}"] = recall(found, truth, 10)
        out[f"R@100 ef{ef}"] = recall(found, truth, 100)
    return out


def add_in_batches(idx, v, ids, batch: int, method: str) -> float:
    t = time.perf_counter()
    for s in range(0, len(v), batch):
        # The Debian set names 13 pairs of documents by one id: keep both, as the build does.
        idx.add(v[s : s + batch], ids[s : s + batch], method=method, on_existing="append")
    return time.perf_counter() - t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--share", type=float, default=0.1, help="share of the corpus added")
    p.add_argument("--methods", default="exact,search")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    v = torch.from_numpy(np.load(os.path.join(DEBIAN, "docs.f16.npy")))
    names = [line.strip() for line in open(os.path.join(DEBIAN, "doc_ids.txt"), encoding="utf-8")]
    order = np.random.default_rng(0).permutation(len(v))
    v = v[torch.from_numpy(order)].contiguous()
    names = [names[i] for i in order]
    n = len(v)
    n0 = n - int(round(a.share * n))
    q = engine.QNet.load(os.path.join(DEBIAN, "qnets.dev64.safetensors"), dtype=torch.float32)
    print(f"# {machine()}", flush=True)
    print(f"# Debian set {n} x {v.shape[1]}: build on {n0}, add {n - n0} in batches of {a.batch}", flush=True)

    t = time.perf_counter()
    full = engine.Index.from_vectors(v, names).build_graph(32)
    rebuild_s = time.perf_counter() - t
    truth = truth_of(full, q)
    rows = [{"index": "rebuilt on 100%", "docs/s": float("nan"), "seconds": rebuild_s, **recalls(full, q, truth)}]
    print(f"rebuilt in {rebuild_s:.1f} s", flush=True)

    tmp = tempfile.mkdtemp(prefix="bench-update-")
    base_path = os.path.join(tmp, "base")
    t = time.perf_counter()
    engine.Index.from_vectors(v[:n0], names[:n0]).build_graph(32).save(base_path)
    base_s = time.perf_counter() - t
    print(f"base built in {base_s:.1f} s", flush=True)
    new_v, new_ids = v[n0:], names[n0:]
    for method in a.methods.split(","):
        mem = engine.Index.load(base_path, mmap=False)
        mem.path = None  # an in-memory index: no disk writes
        secs = add_in_batches(mem, new_v, new_ids, a.batch, method)
        rows.append({"index": f"added in memory ({method})", "docs/s": (n - n0) / secs, "seconds": secs,
                     **recalls(mem, q, truth)})
        print(rows[-1], flush=True)
        if method != a.methods.split(",")[0]:
            continue  # on disk: the first method only (the graph is the same; the writes are measured)
        path = os.path.join(tmp, f"disk-{method}")
        engine.Index.load(base_path, mmap=False).save(path)
        disk = engine.Index.load(path)
        secs = add_in_batches(disk, new_v, new_ids, a.batch, method)
        reopened = engine.Index.load(path, verify=True)
        same = torch.equal(reopened.graph, mem.graph) and torch.equal(reopened.vectors, v)
        rows.append({"index": f"added on disk ({method})", "docs/s": (n - n0) / secs, "seconds": secs,
                     **recalls(reopened, q, truth)})
        print(rows[-1], f"reopened with verify: same graph and vectors as in memory: {same}", flush=True)
    # Deletes and compaction on the on-disk index.
    rng = np.random.default_rng(1)
    gone = [names[i] for i in rng.choice(n, size=n // 100, replace=False)]
    lat = []
    for s in range(0, len(gone), 100):
        t = time.perf_counter()
        disk.delete(gone[s : s + 100])
        lat.append(time.perf_counter() - t)
    t = time.perf_counter()
    disk.compact()
    compact_s = time.perf_counter() - t
    engine.Index.load(disk.path, verify=True)
    text = table(f"Debian set {n:,} x {v.shape[1]}: {n - n0:,} documents added in batches of {a.batch:,} to an "
                 f"index built on {n0:,}", rows,
                 f"recall of the default graph search against the exact float32 top-100 over the full corpus; "
                 f"base build {base_s:.1f} s; machine loaded by other work ({os.getloadavg()[0]:.1f} load)")
    other = (f"delete on disk, {len(lat)} calls of 100 ids: median {1e3 * statistics.median(lat):.1f} ms, "
             f"max {1e3 * max(lat):.1f} ms; compaction of {len(gone)} deleted rows ({len(disk):,} kept) on disk: "
             f"{compact_s:.1f} s")
    print(other, flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": machine(), "rows": rows, "delete_ms": [1e3 * x for x in lat],
                       "compact_seconds": compact_s, "text": text + "\n\n" + other}, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
