"""Graph search against corpus size: build cost, memory, latency and recall.

For each n (synthetic, structured, 768 wide, bf16; 2-layer q-nets built like trained ones,
and a 6-layer table with ``--layers 6``) the index is built once with the command a user
would run, ``python -m engine build DIR --synthetic N --dim 768 --graph 32``, timed as a
whole and cached outside the repository (``$HYPENCODER_BENCH_CACHE``, default
``~/.cache/hypencoder-bench``); the exact top-100 of the measured queries comes from the
engine's exact search and is cached too. Then, in this run: batch-1 latency (p50, p95) and
batch throughput of the default graph search at several settings of its knob ``ef`` and of
the paper preset, recall@10 / @100 against exact search, documents scored by the q-net,
rows read exactly and codes scanned per query, and the process's resident memory.

The Debian set (../shared/data/debian-minilm, its 64 stored dev q-nets) gets the same
table, plus exact search and a faiss HNSW bi-encoder row (the all-MiniLM-L6-v2 embedding
of the query text, cosine over the same document vectors): what a user would otherwise
pick, measured in the same run (query encoding excluded from every latency, as the
hypernetwork's is from the q-net rows).

    python -m bench.bench_scale                         # 1M 2M 4M 8.8M, then Debian
    python -m bench.bench_scale --ns 1e6 --layers 6 --queries 8
    python -m bench.bench_scale --ns --debian           # Debian only
    python -m bench.bench_scale --png-from bench/results/scale-A.json bench/results/scale-B.json

Prints markdown tables as it goes, writes them with the machine and command into
``bench/results/scale-<date>.json`` and draws ``bench/scale_latency_recall.png`` and
``bench/scale_latency_n.png``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

import engine
from engine.native_args import precision_scope

from .bench_cpu import cpu_model

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CACHE = os.environ.get("HYPENCODER_BENCH_CACHE", os.path.expanduser("~/.cache/hypencoder-bench"))
DEBIAN = os.path.join(ROOT, "..", "shared", "data", "debian-minilm")
EFS = (8, 16, 24, 32, 40, 48, 64)


def machine() -> dict:
    model = cpu_model()
    from engine.backends import cpu

    return {"cpu": model, "cores": os.cpu_count(), "isa": cpu.isa(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "load": os.getloadavg()}


def rss_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def dir_gb(path: str, prefix: str = "") -> float:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.startswith(prefix)) / 2**30


def synthetic_index(n: int, dim: int) -> tuple[engine.Index, dict]:
    """The cached index of n synthetic vectors, built by the CLI on first use (timed)."""
    os.makedirs(CACHE, exist_ok=True)
    path = os.path.join(CACHE, f"syn{n}x{dim}")
    rec_path = path + ".build.json"
    if not os.path.exists(rec_path):
        cmd = [sys.executable, "-m", "engine", "build", path, "--synthetic", str(n), "--dim", str(dim),
               "--graph", "32"]
        print("building:", " ".join(cmd[1:]), flush=True)
        t = time.perf_counter()
        subprocess.run(cmd, check=True)
        rec = {"command": "python " + " ".join(cmd[1:]), "seconds": time.perf_counter() - t, "machine": machine()}
        with open(rec_path, "w") as f:
            json.dump(rec, f)
    with open(rec_path) as f:
        rec = json.load(f)
    # Every page mapped at open: a service searching a large index at low latency does so
    # (see Index.load), and the latency rows then measure the search, not page faults.
    return engine.Index.load(path, populate=True), rec


def exact_truth(idx, q, key: str, k: int = 100):
    """Exact top-k ids of the q-nets (the engine's exact search in float32 arithmetic: the
    precision policy would compute bf16 vectors in bf16), cached under ``key``; the queries
    done so far are kept in a partial file, so a stopped run resumes where it was."""
    path = os.path.join(CACHE, f"truth-{key}.pt")
    if os.path.exists(path):
        return torch.load(path)
    part = path + ".partial"
    done = torch.load(part) if os.path.exists(part) else {"ids": [], "seconds": []}
    for i in range(len(done["ids"]), q.num_queries):
        t = time.perf_counter()
        with precision_scope("fp32"):
            done["ids"].append(idx.search(q[i], k).ids)
        done["seconds"].append(time.perf_counter() - t)
        torch.save(done, part)
        print(f"  exact truth {key}: query {i + 1}/{q.num_queries} in {done['seconds'][-1]:.1f} s", flush=True)
    out = {"ids": torch.cat(done["ids"]), "seconds_per_query": statistics.median(done["seconds"]),
           "machine": json.dumps(machine(), default=str), "date": time.strftime("%Y-%m-%d")}
    torch.save(out, path)
    os.remove(part)
    return out


def recall(found: torch.Tensor, truth: torch.Tensor, k: int) -> float:
    return sum(len(set(a[:k]) & set(b[:k])) for a, b in zip(found.tolist(), truth.tolist())) / (k * len(truth))


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def measure(idx, q, truth, name: str, repeats: int = 2, **opts) -> dict:
    """One table row: batch-1 latency over every query (``repeats`` rounds), one batch call."""
    Q = q.num_queries
    idx.search(q[0], 100, **opts)  # warm-up: caches, first touch of the pages
    lat, ids, st = [], [None] * Q, []
    for _ in range(repeats):
        for i in range(Q):
            t = time.perf_counter()
            r = idx.search(q[i], 100, **opts)
            lat.append(time.perf_counter() - t)
            ids[i] = r.ids
            st.append(r.stats)
    t = time.perf_counter()
    idx.search(q, 100, **opts)
    qps = Q / (time.perf_counter() - t)
    found = torch.cat(ids)
    mean = lambda f: sum(getattr(s, f) for s in st) / len(st)  # noqa: E731
    return {"method": name, "recall@10": recall(found, truth, 10), "recall@100": recall(found, truth, 100),
            "p50 ms": 1e3 * statistics.median(lat), "p95 ms": 1e3 * pct(lat, 95), "batch q/s": qps,
            "scored": mean("documents_scored"), "rows read": mean("linear_rows"),
            "codes read": mean("coded_rows")}


def table(title: str, rows: list, note: str = "") -> str:
    cols = list(rows[0])
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = [f"### {title}", "", note, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    text = "\n".join(lines)
    print(text + "\n", flush=True)
    return text


def parse_setting(text: str) -> dict:
    """``"ef=4,max_steps=0"`` -> ``{"ef": 4, "max_steps": 0}`` (ints, floats or words)."""
    out = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        for conv in (int, float, str):
            try:
                out[key.strip()] = conv(value.strip())
                break
            except ValueError:
                continue
    return out


def graph_rows(idx, q, truth, efs, paper: bool, repeats: int, settings=()) -> list:
    rows = [measure(idx, q, truth, f"default ef={ef}", repeats, mode="graph", ef=ef) for ef in efs]
    rows += [measure(idx, q, truth, f"default {s}", repeats, mode="graph", **parse_setting(s)) for s in settings]
    if paper:
        rows.append(measure(idx, q, truth, "paper preset", 1, mode="graph", preset="paper"))
    return rows


def run_synthetic(n: int, layers: int, nq: int, efs, repeats: int, settings=()) -> dict:
    dim = 768
    base = rss_gb()
    idx, rec = synthetic_index(n, dim)
    q = engine.synthetic.qnets(nq, [dim] * (layers + 1) + [1], seed=1)
    tr = exact_truth(idx, q, f"syn{n}x{dim}-L{layers}-q{nq}")
    rows = graph_rows(idx, q, tr["ids"], efs, paper=layers == 2, repeats=repeats, settings=settings)
    vec_gb = dir_gb(idx.path, "vectors")
    res = {"n": n, "layers": layers, "queries": nq, "build_seconds": rec["seconds"], "build_command": rec["command"],
           "vectors_gb": vec_gb, "index_gb": dir_gb(idx.path), "rss_gb": rss_gb() - base,
           "exact_seconds_per_query": tr["seconds_per_query"], "rows": rows}
    note = (f"n = {n:,}, d = {dim} bf16, q-nets [{dim}]*{layers + 1}+[1], {nq} queries; build "
            f"({rec['command']}) {rec['seconds'] / 60:.1f} min; index on disk {res['index_gb']:.2f} GiB "
            f"(vectors {vec_gb:.2f} GiB); the process grew by {res['rss_gb']:.2f} GiB opening and searching it "
            f"({res['rss_gb'] / vec_gb:.2f} x the vectors); exact search in float32 {tr['seconds_per_query']:.1f} s "
            f"per query ({tr.get('date', 'earlier')}, when the truth was computed)")
    res["text"] = table(f"synthetic n = {n:,}, {layers}-layer q-nets", rows, note)
    return res


def run_debian(efs, repeats: int, settings=()) -> dict:
    D = DEBIAN
    path = os.path.join(CACHE, "debian-minilm")
    if not os.path.exists(path + ".build.json"):
        ids = [line.strip() for line in open(os.path.join(D, "doc_ids.txt"), encoding="utf-8")]
        v = torch.from_numpy(np.load(os.path.join(D, "docs.f16.npy")))
        t = time.perf_counter()
        engine.Index.from_vectors(v, ids).build_graph(32).save(path)
        with open(path + ".build.json", "w") as f:
            json.dump({"seconds": time.perf_counter() - t, "command": "Index.build_graph(32)"}, f)
    idx = engine.Index.load(path, populate=True)
    q = engine.QNet.load(os.path.join(D, "qnets.dev64.safetensors"), dtype=torch.float32)
    tr = exact_truth(idx, q, "debian-dev64")
    rows = [measure(idx, q, tr["ids"], "exact", 1)]
    rows += graph_rows(idx, q, tr["ids"], efs, paper=True, repeats=repeats, settings=settings)
    try:
        rows.append(biencoder_row(idx, q, tr["ids"]))
    except ImportError as e:
        print(f"(no bi-encoder row: {e})")
    return {"rows": rows, "text": table("debian-minilm, 58,285 x 384, 64 stored dev q-nets", rows,
                                        "recall against the q-nets' exact top-100; the bi-encoder row's "
                                        "recall is of its own results against the same truth")}


def biencoder_row(idx, q, truth) -> dict:
    """faiss HNSW (inner product over normalised vectors) with the MiniLM query embedding."""
    import faiss

    D = DEBIAN
    qids = [json.loads(line)["id"] for line in open(os.path.join(D, "queries.dev.jsonl"))][: q.num_queries]
    texts = {json.loads(line)["id"]: json.loads(line)["text"] for line in open(os.path.join(D, "queries.dev.jsonl"))}
    model = engine.HypencoderModel.from_pretrained(os.path.join(D, "checkpoint"))
    qv = model.encode_documents([texts[i] for i in qids], max_length=32).float()
    x = torch.nn.functional.normalize(idx.vectors.float(), dim=1).numpy()
    hnsw = faiss.IndexHNSWFlat(x.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 80
    t = time.perf_counter()
    hnsw.add(x)
    build = time.perf_counter() - t
    hnsw.hnsw.efSearch = 64
    qn = torch.nn.functional.normalize(qv, dim=1).numpy()
    lat, found = [], []
    for i in range(len(qn)):
        t = time.perf_counter()
        _, I = hnsw.search(qn[i : i + 1], 100)
        lat.append(time.perf_counter() - t)
        found.append(I[0])
    found = torch.from_numpy(np.stack(found)).long()
    t = time.perf_counter()
    hnsw.search(qn, 100)
    qps = len(qn) / (time.perf_counter() - t)
    rel = {i: i for i in qids}  # the relevant document of query X is document X
    ext = idx.external_ids(found[:, :10])
    mrr = statistics.mean(next((1 / (r + 1) for r, d in enumerate(row) if d == rel[qid]), 0.0)
                          for qid, row in zip(qids, ext))
    return {"method": f"bi-encoder faiss HNSW32 ef64 (MRR@10 {mrr:.3f}, build {build:.1f} s)",
            "recall@10": recall(found, truth, 10), "recall@100": recall(found, truth, 100),
            "p50 ms": 1e3 * statistics.median(lat), "p95 ms": 1e3 * pct(lat, 95), "batch q/s": qps,
            "scored": 0.0, "rows read": float("nan"), "codes read": float("nan")}


def draw(results: list, layers: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    syn = [r for r in results if "n" in r and r["layers"] == layers]
    if not syn:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in syn:
        rows = [x for x in r["rows"] if x["method"].startswith("default")]
        ax.plot([x["p50 ms"] for x in rows], [x["recall@10"] for x in rows], "o-", label=f"n = {r['n']:,}")
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency, batch 1 (ms)")
    ax.set_ylabel("recall@10")
    ax.axhline(0.95, color="grey", lw=0.5)
    ax.legend()
    ax.set_title(f"default graph search, {layers}-layer q-nets, ef {'/'.join(map(str, EFS))}")
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, "scale_latency_recall.png"), dpi=110)
    fig, ax = plt.subplots(figsize=(6, 4))
    ns = [r["n"] for r in syn]
    for ef in EFS:
        ys = [next((x["p50 ms"] for x in r["rows"] if x["method"] == f"default ef={ef}"), None) for r in syn]
        if all(y is not None for y in ys):
            ax.plot(ns, ys, "o-", label=f"default ef={ef}")
    ax.plot(ns, [1e3 * r["exact_seconds_per_query"] for r in syn], "s--", label="exact search")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("documents n")
    ax.set_ylabel("p50 latency, batch 1 (ms)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, "scale_latency_n.png"), dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ns", type=float, nargs="*", default=[1e6, 2e6, 4e6, 8.8e6])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--queries", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2, help="rounds of batch-1 latency per row")
    ap.add_argument("--efs", type=int, nargs="*", default=list(EFS))
    ap.add_argument("--settings", nargs="*", default=[], metavar="K=V,...",
                    help='more rows of the default preset, e.g. "ef=4,max_steps=0"')
    ap.add_argument("--debian", action="store_true", help="also the Debian set (the default with the default --ns)")
    ap.add_argument("--no-png", action="store_true")
    ap.add_argument("--png-from", nargs="+", metavar="JSON",
                    help="only draw the PNGs, from the results of earlier runs (bench/results/scale-*.json)")
    args = ap.parse_args(argv)
    if args.png_from:
        results = [r for f in args.png_from for r in json.load(open(f))["results"]]
        draw(sorted((r for r in results if "n" in r), key=lambda r: r["n"]), args.layers)
        return 0
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    info = machine()
    print(f"# machine: {info}\n", flush=True)
    results = []
    for n in args.ns:
        results.append(run_synthetic(int(n), args.layers, args.queries, args.efs, args.repeats, args.settings))
    if args.debian or argv is None and sys.argv[1:] == []:
        results.append(run_debian(args.efs, args.repeats, args.settings))
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    out = os.path.join(HERE, "results", f"scale-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(out, "w") as f:
        json.dump({"machine": info, "argv": sys.argv, "results": results}, f, indent=1, default=str)
    print(f"wrote {out}")
    if not args.no_png:
        draw(results, args.layers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
