"""The paper preset against the Python reference of the paper's algorithm, and graph
search on a GPU.

Cases: ``debian`` (../shared/data/debian-minilm with its stored dev q-nets) and ``syn1m``
(synthetic 1M x 768 bf16, 2-layer q-nets): exact search, the Python reference
(tests/reference/paper.py, structured like the official code), the engine's paper preset
(which must return the reference's results exactly) and the default at a few settings,
measured in the same run; the arithmetic bound of the paper preset (this machine's FMA
peak over the reference's rate) printed with them. ``--gpu``: synthetic 8.8M x 768 bf16 on
CUDA with 6-layer q-nets (torch implementation, candidates by an exact scan, which a GPU
does in milliseconds), batch 1 and batch 64. Every row is printed (and flushed) as it is
measured. Run from the repository root:

    python -m bench.bench_graph --case debian
    python -m bench.bench_graph --gpu [--gpu-n 8800000]
    python -m bench.bench_graph --gpu-dry-run        # the GPU path on CPU tensors, tiny
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import engine
from bench import graph_data as gd
from engine.graph.common import entry_points
from tests.reference.paper import LazyAdjacency, adjacency, paper_search_python

COLS = ("method", "recall@10", "recall@100", "scored", "p50 ms", "p95 ms", "batch q/s")


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def header(title: str, note: str = "") -> None:
    print(f"\n### {title}\n\n{note}\n\n| " + " | ".join(COLS) + " |\n|" + "---|" * len(COLS), flush=True)


def emit(row: dict) -> dict:
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    print("| " + " | ".join(fmt(row[c]) for c in COLS) + " |", flush=True)
    return row


def per_query(idx, q, k, nq, **opts):
    """Batch-1 latencies (s), the results and the mean q-net evaluations per query."""
    lat, ids, scored = [], [], 0
    for i in range(nq):
        sync(q.device)
        t = time.perf_counter()
        r = idx.search(q[i], k, **opts)
        sync(q.device)
        lat.append(time.perf_counter() - t)
        ids.append(r.ids.cpu())
        scored += r.stats.documents_scored
    return lat, torch.cat(ids), scored / nq


def batch_qps(idx, q, k, **opts) -> float:
    sync(q.device)
    t = time.perf_counter()
    idx.search(q, k, **opts)
    sync(q.device)
    return q.num_queries / (time.perf_counter() - t)


def row(name, lat, ids, truth, scored, qps=float("nan")):
    return {"method": name, "recall@10": gd.recall(ids, truth, 10),
            "recall@100": gd.recall(ids, truth, 100) if ids.shape[1] >= 100 else float("nan"),
            "scored": float(scored), "p50 ms": 1e3 * statistics.median(lat),
            "p95 ms": 1e3 * sorted(lat)[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))], "batch q/s": qps}


def paper_vs_reference(name, idx, q, truth, *, nq_base: int, gpu: bool, impl: str = "auto") -> None:
    """The Python reference and the engine's preset on the same queries, both scoring with
    the same backend: identical ids, the speed-up, and the bound the machine's arithmetic
    peak puts on it."""
    be = "cuda" if gpu else "cpu"
    opts = dict(mode="graph", preset="paper", backend=be, impl=impl)
    ent = entry_points(idx, 10_000)
    qb = q[:nq_base]
    adj = adjacency(idx.graph) if len(idx) <= 2_000_000 else LazyAdjacency(idx.graph)  # outside the timing
    t = time.perf_counter()
    ref, st = paper_search_python(qb, idx.vectors, adj, ent, 100, backend=be)
    base = (time.perf_counter() - t) / nq_base
    base_ids = torch.tensor([r[1] + [-1] * (100 - len(r[1])) for r in ref])
    base_scored = sum(s["documents_scored"] for s in st) / nq_base
    emit(row("paper, Python reference", [base], base_ids, truth[:nq_base], base_scored))
    lat, ids, scored = per_query(idx, q, 100, q.num_queries, **opts)
    emit(row("paper preset, engine", lat, ids, truth, scored, batch_qps(idx, q, 100, **opts)))
    same = torch.equal(ids[:nq_base], base_ids)
    eng = statistics.median(lat[:nq_base])
    note = f"paper preset identical to the reference on {nq_base} queries: **{same}**, {base / eng:.1f}x faster."
    if not gpu:
        from engine.backends import cpu

        peak = max(cpu.fma_peak_gflops(seconds=0.6) for _ in range(3))
        rate = base_scored * q.flops_per_document() / base / 1e9
        note += (f" The reference computes at {rate:.0f} GFLOP/s against this machine's fp32 FMA peak "
                 f"of {peak:.0f} GFLOP/s: no implementation with identical results can be more than "
                 f"{peak / rate:.1f}x faster.")
    print(f"\n{note}\n", flush=True)


def run_case(name, idx, q, *, efs, nq_base, exact_queries, gpu=False, **opts) -> None:
    truth_s, truth, _ = gd.exact_truth(name, idx, q, 100)
    header(f"{name}: n = {len(idx):,}, d = {idx.dim}, q-net {q.vector_dimensions}, {q.num_queries} queries",
           f"{time.strftime('%Y-%m-%d %H:%M')}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    lat, _, _ = per_query(idx, q, 100, exact_queries, mode="exact")
    emit(row("exact", lat, truth[:exact_queries], truth[:exact_queries], len(idx)))
    for ef in efs:
        lat, ids, scored = per_query(idx, q, 100, q.num_queries, mode="graph", ef=ef, **opts)
        emit(row(f"default ef={ef}", lat, ids, truth, scored, batch_qps(idx, q, 100, mode="graph", ef=ef, **opts)))
    paper_vs_reference(name, idx, q, truth, nq_base=nq_base, gpu=gpu, impl=opts.get("impl", "auto"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", choices=["debian", "syn1m"], default="debian")
    ap.add_argument("--queries", type=int, default=16)
    ap.add_argument("--gpu", action="store_true", help="synthetic corpus on CUDA (torch implementation)")
    ap.add_argument("--gpu-n", type=int, default=8_800_000)
    ap.add_argument("--gpu-dry-run", action="store_true", help="the --gpu path on CPU tensors at a tiny size")
    args = ap.parse_args(argv)
    if args.gpu or args.gpu_dry_run:
        dry = args.gpu_dry_run
        dev = torch.device("cpu" if dry else "cuda")
        n, d = (3000, 64) if dry else (args.gpu_n, 768)
        t = time.perf_counter()
        x = engine.synthetic.vectors(n, d, seed=0, dtype=torch.bfloat16, device=dev)
        sync(dev)
        print(f"vectors {n:,} x {d} on {dev}: {time.perf_counter() - t:.1f} s", flush=True)
        q = engine.synthetic.qnets(8 if dry else 64, [d] * 7 + [1], seed=1, dtype=torch.bfloat16).to(device=dev)
        idx = engine.Index(x, _checked=True)
        t = time.perf_counter()
        build = {"method": "exact"} if n <= 2_000_000 else {"method": "cluster", "nprobe": 8}
        idx.build_graph(32, codes=False, block_size=4096, **build)
        print(f"graph on {dev}: {time.perf_counter() - t:.1f} s, {idx.graph_params}; neighbour recall@32 "
              f"{gd.graph_recall(idx):.3f}", flush=True)
        run_case(f"gpu{n}" + ("-dry" if dry else ""), idx, q[: 4 if dry else 16], efs=(8, 16) if dry else (8, 16, 32, 64),
                 nq_base=2, exact_queries=2, gpu=not dry, impl="torch", candidates="scan")
        print(f"batch {q.num_queries}, default ef=32: {batch_qps(idx, q, 10, mode='graph', ef=32, impl='torch', candidates='scan'):.0f} q/s",
              flush=True)
        return 0
    if args.case == "debian":
        x, q = gd.debian(args.queries)
        idx = gd.index_with_graph("debian", x, 32)
        run_case("debian", idx, q, efs=(8, 16, 32, 64), nq_base=4, exact_queries=4)
    else:
        x, q = gd.synthetic(1_000_000, 768, 2, args.queries)
        idx = gd.index_with_graph("syn1m", x, 32)
        run_case("syn1m", idx, q, efs=(8, 16, 32, 64), nq_base=2, exact_queries=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
