"""Sharded search on this machine against the number of processes, and a scaling model.

Data: the Debian set (58,285 x 384 float16, its stored dev q-nets [384, 384, 384, 1]); a
graph (R = 32, ``method="cluster"``, ``dims=96``) and the candidate codes per index,
cached under /tmp. Baseline, same run: the single index searched in this process.

1. Processes: for P in ``--procs`` (default 1, 2, 4), P gloo ranks on this machine, each
   serving one of P equal shards: exact and graph search, latency at batch 1 and
   throughput at batch ``--queries``; per search the slowest rank's own search, the
   all_gather of the results and the request (broadcast of the q-nets); recall@10 of
   graph search against exact.
2. Costs measured for the model: the search of one shard by one thread at three shard
   sizes (per-shard latency against rows); the linear stage of graph search (no beam
   steps) at width 768 on a synthetic corpus of up to 1M rows and, for its slope per
   row, on a 128-wide one of up to 4M rows (codes built once, cached); all_gather of the
   result words and broadcast of q-nets between 2 and 4 ranks.
3. The scaling table: latency and memory per rank predicted for 8.8M, 100M and 1B
   documents of width 768 on N ranks (CPU hosts or GPUs), assumptions printed with it.

    python -m bench.bench_sharded [--procs 1,2,4] [--queries 16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)  # the checkout's engine (also when run as a file)

import engine  # noqa: E402
from engine.distributed import ShardedSearcher, shard_index  # noqa: E402
from engine.graph.params import DefaultSearchParams  # noqa: E402

DEBIAN = os.path.join(REPO, "..", "shared", "data", "debian-minilm")
CACHE = os.environ.get("HYP_BENCH_CACHE", "/tmp/hyp_shard_bench")
K = 10
BUILD = {"method": "cluster", "dims": 96}


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def qnets(n: int) -> engine.QNet:
    return engine.QNet.load(os.path.join(DEBIAN, "qnets.dev64.safetensors"), dtype=torch.float32)[:n]


def indexes(procs) -> tuple[str, dict]:
    """The single index (graph + codes) and its P-shard splits, built once into CACHE."""
    os.makedirs(CACHE, exist_ok=True)
    single = os.path.join(CACHE, "single")
    if not os.path.exists(single):
        x = torch.from_numpy(np.load(os.path.join(DEBIAN, "docs.f16.npy")))
        t = time.perf_counter()
        engine.Index.from_vectors(x).build_graph(32, **BUILD).save(single)
        print(f"# built the single index in {time.perf_counter() - t:.0f} s", flush=True)
    out = {}
    for p in sorted(set(procs) | {2, 4}):
        path = os.path.join(CACHE, f"sharded{p}")
        if not os.path.exists(path):
            t = time.perf_counter()
            shard_index(single, path, num_shards=p)
            print(f"# built {p} shards in {time.perf_counter() - t:.0f} s", flush=True)
        out[p] = path
    return single, out


# ---------------------------------------------------------------------------- a rank
def _timed(fn, reps):
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        r = fn()
        out.append((time.perf_counter() - t, r))
    return out


def worker(spec_path: str) -> None:
    """One rank of the process sweep (started by :func:`sweep` with the torchrun variables)."""
    import torch.distributed as dist

    from engine.distributed import init_from_env
    from engine.distributed.comm import Comm

    with open(spec_path) as f:
        spec = json.load(f)
    init_from_env("cpu", timeout=600)
    rank, size = dist.get_rank(), dist.get_world_size()
    s = ShardedSearcher.open(spec["index"], timeout=600, populate=True)
    q = qnets(spec["queries"])
    mine = lambda qq: qq if rank == 0 else None  # noqa: E731  (q-nets broadcast from rank 0)
    s.search(mine(q[:2]), K, mode="graph")  # page in, entry points
    s.search(mine(q[:1]), K)
    rec = {"ranks": size}
    for mode, reps_batch, n1 in (("graph", 3, spec["queries"]), ("exact", 1, spec["exact_batch1"])):
        one = [_timed(lambda: s.search(mine(q[i:i + 1]), K, mode=mode), 1)[0] for i in range(n1)]
        batch = _timed(lambda: s.search(mine(q), K, mode=mode), reps_batch)
        rec[mode] = {
            "batch1_s": [t for t, _ in one], "batch_s": [t for t, _ in batch],
            "batch1_shard_s": [max(r.stats.shard_seconds) for _, r in one],
            "batch1_gather_s": [r.stats.gather_seconds for _, r in one],
            "batch1_request_s": [r.stats.request_seconds for _, r in one],
            "ids": batch[-1][1].ids.tolist()}
    # Collectives alone: the result words of one search and q-net broadcasts.
    comm = Comm(timeout=600)
    per_q = sum(t.numel() for t in q[:1].weights + q[:1].biases) * 4
    coll = {}
    for name, nbytes, op in (("gather Q=1 k=10", 6 * 8 + 16 * 10, "gather"),
                             ("gather Q=16 k=10", 6 * 8 + 16 * 160, "gather"),
                             ("gather Q=16 k=1000", 6 * 8 + 16 * 16000, "gather"),
                             ("broadcast 1 q-net", per_q, "bcast"), ("broadcast 16 q-nets", 16 * per_q, "bcast")):
        t = torch.zeros(nbytes // 8, dtype=torch.int64)
        times = []
        for _ in range(30):
            dist.barrier()
            t0 = time.perf_counter()
            comm.all_gather(t, name) if op == "gather" else comm.broadcast(t, 0, name)
            times.append(time.perf_counter() - t0)
        coll[name] = {"bytes": nbytes, "s": statistics.median(times[3:])}
    rec["collectives"] = coll
    if rank == 0:
        with open(spec["out"], "w") as f:
            json.dump(rec, f)
    dist.destroy_process_group()


def sweep(path: str, procs: int, queries: int, exact_batch1: int) -> dict:
    """P ranks on this machine (2 cores shared: 2 threads for one rank, 1 for more)."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = {"index": path, "queries": queries, "exact_batch1": exact_batch1, "out": os.path.join(tmp, "r.json")}
        with open(os.path.join(tmp, "spec.json"), "w") as f:
            json.dump(spec, f)
        with __import__("socket").socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(procs),
                   OMP_NUM_THREADS=str(max(1, 2 // procs)), PYTHONPATH=REPO)
        cmd = [sys.executable, "-m", "bench.bench_sharded", "--worker", os.path.join(tmp, "spec.json")]
        ps = [subprocess.Popen(cmd, env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), cwd=REPO) for r in range(procs)]
        if any(p.wait() for p in ps):
            raise SystemExit(f"a rank of the {procs}-process run failed")
        with open(spec["out"]) as f:
            return json.load(f)


# ---------------------------------------------------------------------------- this process
def baseline(single: str, q, exact_batch1: int) -> dict:
    ix = engine.Index.load(single)
    ix.search(q[:2], K, mode="graph")
    rec = {}
    for mode, reps, n1 in (("graph", 3, q.num_queries), ("exact", 1, exact_batch1)):
        one = [_timed(lambda: ix.search(q[i:i + 1], K, mode=mode), 1)[0][0] for i in range(n1)]
        batch = _timed(lambda: ix.search(q, K, mode=mode), reps)
        rec[mode] = {"batch1_s": one, "batch_s": [t for t, _ in batch], "ids": batch[-1][1].ids.tolist(),
                     "documents_scored": batch[-1][1].stats.documents_scored / q.num_queries,
                     "coded_rows": batch[-1][1].stats.coded_rows / q.num_queries}
    return rec


def per_shard(paths: list, q, exact_queries: int) -> list:
    """One thread searching one index alone, s per query (the median over the queries of
    each one's fastest of 3 runs): ``(rows, graph, graph without beam steps, exact)``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = []
    try:
        for path in paths:
            ix = engine.Index.load(path)
            ix.search(q[:1], K, mode="graph")
            row = [len(ix)]
            for opts, nq in (({"mode": "graph"}, q.num_queries), ({"mode": "graph", "max_steps": 0}, q.num_queries),
                             ({}, exact_queries)):
                row.append(statistics.median(min(t for t, _ in _timed(lambda: ix.search(q[i:i + 1], K, **opts), 3))
                                             for i in range(nq)))
            out.append(tuple(row))
    finally:
        torch.set_num_threads(threads)
    return out


def _codes_corpus(n: int, dim: int):
    """A synthetic ``n x dim`` bf16 index with 64-byte codes and a one-column placeholder
    graph (no beam step reads it when ``max_steps=0``), built once into CACHE."""
    path = os.path.join(CACHE, f"syn{n}x{dim}")
    if not os.path.exists(path):
        t = time.perf_counter()
        engine.synthetic.write_index(path, n, dim, seed=0)
        ix = engine.Index.load(path).build_codes(64)
        ix.set_graph(torch.zeros((n, 1), dtype=torch.int32), {"placeholder": True})
        ix.save(path)
        print(f"# built the {n:,d} x {dim} codes in {time.perf_counter() - t:.0f} s", flush=True)
    return engine.Index.load(path)


def _prefix(full, n: int):
    """The first ``n`` rows of ``full`` (n a multiple of 32) with their codes, no copy."""
    from engine.graph.codes import LinearCodes

    c = full.codes
    ix = engine.Index(full.vectors[:n], graph=full.graph[:n], graph_params={})
    ix.codes = LinearCodes(c.codes[: -(-n // 32)], c.rotation, c.dims, c.bits, c.levels, c.mean, n, c.params)
    return ix


def linear_stage(sizes, queries: int, dim: int) -> list:
    """Per-query time of the linear stage of graph search (the default search with no
    beam steps, ``max_steps=0``: the linearisation, the pass over the codes, the exact
    re-rank, the second pass's shortlist) over prefixes of a synthetic ``dim``-wide corpus
    whose 64-byte codes are built once, on one thread. Returns ``(rows, s/query)``: the
    fastest of 3 runs of each of the queries."""
    full = _codes_corpus(max(sizes), dim)
    q = engine.synthetic.qnets(queries, [dim, dim, dim, 1], seed=1, corpus_seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = []
    try:
        for n in sizes:
            ix = _prefix(full, n)
            ix.search(q[:1], K, mode="graph", max_steps=0)
            # The fastest of 3 runs of every query: the slope is a few ms per million rows,
            # less than what a loaded machine adds to single runs.
            t = [min(t for t, _ in _timed(lambda: ix.search(q[i:i + 1], K, mode="graph", max_steps=0), 3))
                 for i in range(queries)]
            out.append((n, min(t)))
    finally:
        torch.set_num_threads(threads)
    return out


# ---------------------------------------------------------------------------- the model
def fit_line(xs, ys):
    """Least-squares ``a + b x``."""
    b, a = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(a), float(b)


F384, F768 = 2 * (384 * 384 * 2 + 384), 2 * (768 * 768 * 2 + 768)  # q-net FLOPs per document
HOST = {"cores": 32, "efficiency": 0.7, "memory_gb": 512, "hop_s": 30e-6, "link_bps": 2.5e9}
GPU = {"flops": 400e12, "codes_bps": 2.0e12, "fixed_s": 2e-3, "memory_gb": 80, "hop_s": 10e-6, "link_bps": 20e9}
BYTES_PER_DOC = 768 * 2 + 64 + 32 * 4  # bf16 vectors, 64 B codes, R = 32 int32 neighbours
QNET_BYTES = (768 * 768 * 2 + 768 * 3) * 4  # one fp32 q-net [768, 768, 768, 1]


def model_table(shard, lin, scan, coll, base) -> tuple[list, list]:
    """Rows of the scaling table and the assumptions behind them.

    One core per query per rank: ``t1(n) = a_lin + b_lin n + beam``. ``b_lin`` is the
    slope of the linear stage over ``scan`` (a narrow corpus of up to 4M rows: the codes
    are 64 bytes per row whatever the width, and the slope stands out of the noise only
    over millions of rows), ``a_lin`` what the width-768 measurements ``lin`` leave once
    the slope is taken off, the beam (full search minus the search without beam steps,
    Debian, one core) scaled by the q-net's arithmetic from width 384 to 768. Exact search
    splits a query's rows over every core of the rank.
    """
    ratio = F768 / F384
    b_lin = fit_line(*zip(*scan))[1]
    a_lin = float(np.median([t - b_lin * n for n, t in lin]))
    beam_384 = float(np.median([max(g - g0, 0.0) for _, g, g0, _ in shard]))
    beam = ratio * beam_384
    e_row = ratio * float(np.median([e / n for n, _, _, e in shard]))
    t1 = lambda n: a_lin + b_lin * n + beam  # noqa: E731
    scored = base["graph"]["documents_scored"]
    cores = HOST["cores"] * HOST["efficiency"]

    def comm(N, net):  # (ring all_gather of the result words, pipelined broadcast of one q-net)
        if N == 1:
            return 0.0, 0.0
        return ((N - 1) * (net["hop_s"] + 16 * K / net["link_bps"]),
                np.ceil(np.log2(N)) * net["hop_s"] + QNET_BYTES / net["link_bps"])

    out = []
    for n in (8_800_000, 100_000_000, 1_000_000_000):
        for N in (1, 8, 64, 256):
            ns = n / N
            mem = ns * BYTES_PER_DOC / 1e9
            if mem <= 0.8 * HOST["memory_gb"]:
                gather, bcast = comm(N, HOST)
                g = t1(ns) + gather
                out.append([f"{n / 1e6:,.1f}M", N, "CPU host", f"{mem:,.1f}", f"{1e3 * g:,.1f}",
                            f"{1e3 * (g + bcast):,.1f}", f"{cores / t1(ns):,.0f}",
                            f"{e_row * ns / cores + gather:,.2f}"])
            if mem <= 0.8 * GPU["memory_gb"]:
                gather, bcast = comm(N, GPU)
                g = GPU["fixed_s"] + ns * 64 / GPU["codes_bps"] + scored * F768 / GPU["flops"] + gather
                out.append([f"{n / 1e6:,.1f}M", N, "GPU", f"{mem:,.1f}", f"{1e3 * g:,.2f}",
                            f"{1e3 * (g + bcast):,.2f}", "-", f"{ns * F768 / GPU['flops'] + gather:,.3f}"])
    gl = {k: v["s"] for k, v in coll.items()}
    assumptions = [
        f"graph search, linear stage (the search without beam steps: linearisation, pass over the 64-byte codes, "
        f"exact re-rank, shortlist), one core: {1e3 * a_lin:.1f} ms + {1e9 * b_lin:.1f} ns per row per query; "
        "the slope by least squares over a synthetic 128-wide corpus ("
        + ", ".join(f"{n / 1e6:g}M rows: {1e3 * t:.1f} ms" for n, t in scan) + "), the fixed part from the "
        "width-768 q-nets on a synthetic 768-wide corpus ("
        + ", ".join(f"{n / 1e6:g}M rows: {1e3 * t:.1f} ms" for n, t in lin) + ")",
        f"graph search, beam (full search minus the search without beam steps), one core, on the Debian shards "
        f"(q-net [384, 384, 384, 1]; median over the three sizes: {1e3 * beam_384:.1f} ms), times "
        f"{ratio:.1f} for the q-net [768, 768, 768, 1] ({F768 / 1e6:.2f} MFLOP per document): {1e3 * beam:.1f} ms; "
        f"graph search scores about {scored:.0f} documents per query whatever the shard size",
        "graph latency: one core per query on every rank; throughput: every core of every rank busy "
        "(q/s = cores / per-query time, the same for the whole cluster since each query visits every rank)",
        f"exact search, one core: {1e9 * e_row / ratio:.0f} ns per row per query at width 384 (Debian), times "
        f"{ratio:.1f} at width 768, a query's rows split over all cores of the rank",
        f"memory per rank: {BYTES_PER_DOC:,d} B per document (bf16 vectors, 64 B codes, R = 32 int32 "
        f"neighbours), resident; rows where a rank would need more than 80% of its memory are left out",
        f"CPU host: {HOST['cores']} cores at {HOST['efficiency']:.0%} efficiency, {HOST['memory_gb']} GB, 25 GbE "
        f"between hosts: {1e6 * HOST['hop_s']:.0f} us per hop, {HOST['link_bps'] / 1e9:.1f} GB/s",
        f"GPU: H100 80 GB, {GPU['flops'] / 1e12:.0f} TFLOP/s sustained bf16 for the q-net layers, the codes pass at "
        f"{GPU['codes_bps'] / 1e12:.0f} TB/s, {1e3 * GPU['fixed_s']:.0f} ms fixed per graph query (launches, beam "
        f"steps); NCCL at {1e6 * GPU['hop_s']:.0f} us per hop and {GPU['link_bps'] / 1e9:.0f} GB/s. None of the GPU "
        "figures is measured (no GPU lent): they are the arithmetic of these assumptions",
        "all_gather: a ring of N - 1 hops of the 16 B x k result words per rank (measured here on one host, "
        "gloo on loopback: " + ", ".join(f"{k}: {1e6 * v:,.0f} us" for k, v in gl.items() if k.startswith("gather"))
        + ")",
        f"q-nets broadcast from one rank: {QNET_BYTES / 1e6:.1f} MB per fp32 q-net [768, 768, 768, 1], pipelined "
        f"(one pass over a link plus log2 N hops); q-nets given on every rank (src=None) cost nothing",
        "recall: each shard returns its own top-k by the same search, so the merged top-k is at least as good as "
        "one index's on these data (measured above); the model assumes the per-shard parameters stay as they are",
    ]
    return out, assumptions


def table(headers, rows):
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--procs", default="1,2,4")
    ap.add_argument("--queries", type=int, default=16)
    ap.add_argument("--exact-batch1", type=int, default=2, help="queries timed one by one in exact search")
    ap.add_argument("--json", help="write every measurement here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker)
    procs = [int(p) for p in args.procs.split(",")]
    single, paths = indexes(procs)
    load0 = os.getloadavg()
    q = qnets(args.queries)
    print(f"# machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; load average at "
          f"start {load0[0]:.1f}, {load0[1]:.1f}, {load0[2]:.1f}", flush=True)
    base = baseline(single, q, args.exact_batch1)
    truth = [set(r) for r in base["exact"]["ids"]]

    def recall(ids):
        return float(np.mean([len(set(r) & t) / K for r, t in zip(ids, truth)]))

    runs = {p: sweep(paths[p], p, args.queries, args.exact_batch1) for p in procs}
    lin = linear_stage([125_000, 250_000, 500_000, 1_000_000], 8, 768)
    scan = linear_stage([500_000, 1_000_000, 2_000_000, 4_000_000], 8, 128)
    shard = per_shard([engine.distributed.read_sharded_manifest(paths[p]).shard_dir(0) for p in (4, 2)] + [single],
                      q, args.exact_batch1)
    load1 = os.getloadavg()
    rows = []
    for mode in ("graph", "exact"):
        b = base[mode]
        rows.append([mode, "one index, this process", "-", f"{1e3 * statistics.median(b['batch1_s']):,.1f}",
                     f"{1e3 * pct(b['batch1_s'], 95):,.1f}", "-", "-", "-",
                     f"{args.queries / min(b['batch_s']):,.1f}", f"{recall(b['ids']):.3f}"])
        for p, r in runs.items():
            m = r[mode]
            rows.append([mode, f"{p} rank{'s' * (p > 1)}", f"{58285 // p:,d}",
                         f"{1e3 * statistics.median(m['batch1_s']):,.1f}", f"{1e3 * pct(m['batch1_s'], 95):,.1f}",
                         f"{1e3 * statistics.median(m['batch1_shard_s']):,.1f}",
                         f"{1e3 * statistics.median(m['batch1_gather_s']):,.2f}",
                         f"{1e3 * statistics.median(m['batch1_request_s']):,.2f}",
                         f"{args.queries / min(m['batch_s']):,.1f}", f"{recall(m['ids']):.3f}"])
    print(f"\n# latency at batch 1 ({args.queries} graph / {args.exact_batch1} exact queries), throughput at batch "
          f"{args.queries}, k = {K}; load average at end {load1[0]:.1f}, {load1[1]:.1f}, {load1[2]:.1f}")
    table(["search", "processes", "rows per shard", "p50 ms", "p95 ms", "slowest shard ms", "all_gather ms",
           "request ms", "q/s", "recall@10"], rows)
    coll = {}
    crow = []
    for p, r in runs.items():
        for name, c in r["collectives"].items():
            if p > 1:
                crow.append([name, p, f"{c['bytes']:,d}", f"{1e6 * c['s']:,.0f}"])
                coll.setdefault(name, c)
    print("# collectives alone (gloo, loopback, median of 27 after a barrier)")
    table(["collective", "ranks", "bytes per rank", "us"], crow)
    print("# one shard searched by one thread (median over the queries of the fastest of 3 runs), Debian")
    table(["rows", "graph ms", "graph without beam ms", "exact ms"],
          [[f"{n:,d}", f"{1e3 * g:.2f}", f"{1e3 * g0:.2f}", f"{1e3 * e:.1f}"] for n, g, g0, e in shard])
    print("# linear stage of graph search (max_steps=0), one thread, synthetic corpora, fastest of 8 queries x 3")
    table(["width", "rows", "ms"], [[w, f"{n:,d}", f"{1e3 * t:.1f}"] for w, pts in ((768, lin), (128, scan))
                                    for n, t in pts])
    mrows, assumptions = model_table(shard, lin, scan, coll, base)
    assumptions.insert(0, f"graph search: the default parameters, {DefaultSearchParams()}")
    print("# scaling model: width 768, k = 10, batch 1 (assumptions below)")
    table(["documents", "ranks N", "rank", "GB per rank", "graph ms (q-nets on every rank)",
           "graph ms (q-nets broadcast)", "graph q/s", "exact s"], mrows)
    for a in assumptions:
        print(f"- {a}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"baseline": base, "runs": runs, "per_shard": shard, "linear_stage": lin, "scan": scan,
                       "model": mrows,
                       "assumptions": assumptions}, f, indent=1)


if __name__ == "__main__":
    main()
