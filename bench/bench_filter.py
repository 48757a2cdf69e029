"""Filtered search on the Debian set: latency and recall@10 at 1%, 10% and 50% selectivity,
beside unfiltered search in the same run, and the selectivity sweep behind the graph
search's ``filter_exact_below``.

Allow-lists are random (seeded), one per query, as bitmaps over the index's rows. Truth:
filtered exact search in float32 arithmetic (``precision_scope("fp32")``), i.e. the true
top-10 of each query's allowed rows. Latency: p50 over the queries, batch 1. The sweep
runs the graph search with the fallback off (``filter_exact_below=0``) to show where the
graph alone stops finding the allowed top-10, and the exact search over the allowed rows
at the same selectivity.

    python -m bench.bench_filter                      # tables, JSON to bench/results/filter.json
    python -m bench.bench_filter --queries 16 --json out.json
    python -m bench.bench_filter --strategies         # also gather against dense exact scoring

The index is the cached Debian index of bench/bench_scale.py (``HYPENCODER_BENCH_CACHE``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch

import engine
from engine.native_args import precision_scope
from engine.search.filtered import filtered_exact_search
from engine.search.filters import resolve

from .bench_scale import CACHE, DEBIAN, HERE, machine, table

SELECTIVITIES = (0.01, 0.1, 0.5)
SWEEP = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5)
RECALL_SLACK = 0.02  # the graph's filtered recall@10 may sit this far under its unfiltered one


def load():
    path = os.path.join(CACHE, "debian-minilm")
    if os.path.exists(path):
        idx = engine.Index.load(path, populate=True)
    else:  # build in memory (minutes): the cache belongs to bench_scale
        ids = [line.strip() for line in open(os.path.join(DEBIAN, "doc_ids.txt"), encoding="utf-8")]
        v = torch.from_numpy(np.load(os.path.join(DEBIAN, "docs.f16.npy")))
        idx = engine.Index.from_vectors(v, ids).build_graph(32)
    q = engine.QNet.load(os.path.join(DEBIAN, "qnets.dev64.safetensors"), dtype=torch.float32)
    return idx, q


def masks(Q: int, n: int, sel: float, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng([seed, int(round(sel * 1e6))])
    return torch.from_numpy(rng.random((Q, n)) < sel)


def truth(idx, q, allow) -> torch.Tensor:
    if allow is None:  # bench_scale's cached exact top-100, when there
        path = os.path.join(CACHE, "truth-debian-dev64.pt")
        if os.path.exists(path):
            return torch.load(path)["ids"][: q.num_queries, :10]
    with precision_scope("fp32"):
        return idx.search(q, 10, allow=allow).ids


def recall(found: torch.Tensor, truth_ids: torch.Tensor) -> float:
    """recall@10 against the filtered truth; a query with fewer than 10 allowed rows counts
    what it has."""
    hit = tot = 0
    for a, b in zip(found.tolist(), truth_ids.tolist()):
        b = [x for x in b if x >= 0]
        hit += len(set(a) & set(b))
        tot += len(b)
    return hit / max(1, tot)


def run(idx, q, allow, name: str, truth_ids, **opts) -> dict:
    """Batch-1 latency over every query and recall@10 of the results."""
    Q = q.num_queries
    one = lambda i: None if allow is None else allow[i : i + 1]  # noqa: E731
    idx.search(q[0], 10, allow=one(0), **opts)  # warm-up
    lat, ids, exact = [], [], 0
    for i in range(Q):
        t = time.perf_counter()
        r = idx.search(q[i], 10, allow=one(i), **opts)
        lat.append(time.perf_counter() - t)
        ids.append(r.ids)
        exact += sum(r.stats.exact)
    return {"search": name, "p50 ms": 1e3 * statistics.median(lat), "recall@10": recall(torch.cat(ids), truth_ids),
            "exact share": exact / Q, "scored": r.stats.documents_scored}


def strategies(idx, q, sels=(0.05, 0.2, 0.5), Q: int = 8) -> list:
    """Per-query bitmaps: the gather strategy against masked dense scoring, per row scored."""
    rows = []
    for sel in sels:
        rf = resolve(idx, masks(Q, len(idx), sel, seed=7), Q)
        row = {"selectivity": sel}
        for how in ("gather", "dense"):
            filtered_exact_search(q[:1], idx.vectors, 10, rf.select(torch.tensor([0])), how=how)
            t = time.perf_counter()
            filtered_exact_search(q[:Q], idx.vectors, 10, rf, how=how)
            row[f"{how} ms"] = 1e3 * (time.perf_counter() - t)
        longest = int(rf.counts.max())
        # cost per gathered row (the padded longest list) over cost per dense row
        row["gather/dense per row"] = (row["gather ms"] / longest) / (row["dense ms"] / len(idx))
        rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=64, help="q-nets of the 64 stored dev q-nets to run")
    ap.add_argument("--json", default=os.path.join(HERE, "results", "filter.json"))
    ap.add_argument("--strategies", action="store_true", help="also time gather against dense exact scoring")
    args = ap.parse_args(argv)
    idx, q = load()
    q = q[: args.queries]
    Q, n = q.num_queries, len(idx)
    mach = machine()
    print(f"CPU {mach['cpu']}, ISA {mach['isa']}, {mach['cores']} cores, load {mach['load']}\n", flush=True)
    out = {"machine": mach, "queries": Q, "n": n}

    base = truth(idx, q, None)
    rows = [run(idx, q, None, "exact, unfiltered", base), run(idx, q, None, "graph, unfiltered", base, mode="graph")]
    for sel in SELECTIVITIES:
        allow = masks(Q, n, sel)
        tr = truth(idx, q, allow)
        rows.append(run(idx, q, allow, f"exact, {sel:.0%}", tr))
        rows.append(run(idx, q, allow, f"graph, {sel:.0%}", tr, mode="graph"))
        rows.append(run(idx, q, allow, f"graph only, {sel:.0%}", tr, mode="graph", filter_exact_below=0.0))
    out["table"] = rows
    table(f"debian-minilm, {n:,} x 384, {Q} stored dev q-nets, per-query random allow-lists", rows,
          "recall@10 against the filtered exact truth (float32); 'graph' uses the default filter_exact_below, "
          "'graph only' turns the exact fallback off")

    paper = run(idx, q, None, "paper, unfiltered", base, mode="graph", preset="paper")
    sweep = []
    for sel in SWEEP:
        allow = masks(Q, n, sel, seed=1)
        tr = truth(idx, q, allow)
        g = run(idx, q, allow, "graph", tr, mode="graph", filter_exact_below=0.0)
        pp = run(idx, q, allow, "paper", tr, mode="graph", preset="paper", filter_exact_below=0.0)
        e = run(idx, q, allow, "exact", tr)
        sweep.append({"selectivity": sel, "graph recall@10": g["recall@10"], "graph p50 ms": g["p50 ms"],
                      "paper recall@10": pp["recall@10"], "paper p50 ms": pp["p50 ms"],
                      "exact recall@10": e["recall@10"], "exact p50 ms": e["p50 ms"]})
    out["sweep"] = sweep
    # The threshold: below it the exact search of the allowed rows is as fast as the graph,
    # or the graph's recall falls short of its unfiltered recall by more than the slack.
    out["threshold"] = {}
    for name, unf in (("graph", rows[1]["recall@10"]), ("paper", paper["recall@10"])):
        worse = [r["selectivity"] for r in sweep
                 if r[f"{name} recall@10"] < unf - RECALL_SLACK or r["exact p50 ms"] <= r[f"{name} p50 ms"]]
        # the share just above the largest selectivity where the graph loses
        above = [x for x in SWEEP if x > max(worse)] if worse else list(SWEEP)
        out["threshold"][name] = above[0] if above else 1.0
    table("selectivity sweep: filtered graph search (no exact fallback) against exact search of the allowed rows",
          sweep, f"unfiltered recall@10 in the same run: default {rows[1]['recall@10']:.3f}, paper "
                 f"{paper['recall@10']:.3f}, paper p50 {paper['p50 ms']:.3g} ms; threshold where the graph "
                 f"wins (faster than exact and recall within {RECALL_SLACK} of unfiltered from there up): "
                 f"{out['threshold']}")
    if args.strategies:
        out["strategies"] = strategies(idx, q)
        table("exact search with per-query bitmaps: gather against dense", out["strategies"], "")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
