"""Document storage types on the Debian set: memory, speed and quality of float16 (as
stored), bfloat16, int8 and float8 e4m3 (engine/quant.py) for exact and graph search.

The documents are ``docs.f16.npy`` (58,285 x 384), the queries the 64 stored dev q-nets
(``qnets.dev64.safetensors``, float32), the judgements ``qrels.dev.tsv``. The baseline is
float32 exact search (the CPU kernels' exact fp32 path over the float16 vectors, which it
converts exactly): its top 100 is the truth that recall@10 is measured against, computed
in the same run. For each storage type the index holds the vectors converted from
float16 (bfloat16 rounded, int8 / float8 e4m3 quantised with one float32 scale per row);
the neighbour graph is the same for all (built once from float16, ``--index``: default
the cached bench index, built if absent), the graph search's candidate codes are rebuilt
from the values each storage holds. Search runs under the default precision policy
(``auto``: the bfloat16 kernel where the CPU has one), as a user gets it.

Per storage: bytes of the vectors (+ scales); exact search batch-1 latency p50 (over the
first ``--latency-queries`` queries) and batch-64 throughput; graph search (default
preset) batch-1 p50 over all 64 queries and recall@10 against the fp32 exact truth; dev
MRR@10 (engine.eval, ir-measures) of exact and graph search over the 64 queries (a
document id listed twice in doc_ids.txt counts once, at its best rank).

    python -m bench.bench_storage [--json out.json] [--latency-queries 16]

Prints a markdown table; writes JSON (default bench/results/storage-<date>.json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import time

import numpy as np
import torch

import engine
from engine import quant
from engine.backends import cpu
from engine.native_args import precision_scope

from .bench_cpu import cpu_model

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEBIAN = os.path.join(ROOT, "..", "shared", "data", "debian-minilm")
CACHED_INDEX = os.path.join(os.environ.get("HYPENCODER_BENCH_CACHE", os.path.expanduser("~/.cache/hypencoder-bench")),
                            "debian-minilm")
STORAGES = ("float16", "bfloat16", "int8", "float8_e4m3")


def load_qnets():
    from safetensors import safe_open

    path = os.path.join(DEBIAN, "qnets.dev64.safetensors")
    with safe_open(path, "pt") as f:
        qids = json.loads(f.metadata()["query_ids"])
    return engine.QNet.load(path, dtype=torch.float32), qids


def mrr10(ids: torch.Tensor, scores: torch.Tensor, qids, doc_ids, qrels) -> float:
    from engine.eval import evaluate, run_from_result

    run_ids, run_s = [], []
    for row, ss in zip(ids.tolist(), scores.tolist()):
        seen, di, ds = set(), [], []
        for r, s in zip(row, ss):
            if r < 0 or doc_ids[r] in seen:
                continue
            seen.add(doc_ids[r])
            di.append(doc_ids[r])
            ds.append(s)
        run_ids.append(di)
        run_s.append(ds)
    judged = {q: r for q, r in qrels.items() if q in set(qids)}
    return evaluate(run_from_result(qids, run_ids, run_s), judged, {"MRR@10": "RR@10"})["MRR@10"]


def recall10(found: torch.Tensor, truth: torch.Tensor) -> float:
    return sum(len(set(a[:10]) & set(b[:10])) for a, b in zip(found.tolist(), truth.tolist())) / (10 * len(truth))


def graph_index(vectors, ids) -> engine.Index:
    if os.path.exists(os.path.join(CACHED_INDEX, "manifest.json")):
        return engine.Index.load(CACHED_INDEX)
    print(f"(no cached index at {CACHED_INDEX}: building the graph, a few minutes)", flush=True)
    return engine.Index.from_vectors(vectors, ids).build_graph(32)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency-queries", type=int, default=16, help="queries timed one by one in exact search")
    ap.add_argument("-k", type=int, default=100)
    ap.add_argument("--json", help="output JSON (default bench/results/storage-<date>.json)")
    args = ap.parse_args(argv)

    from engine.eval import read_qrels

    v16 = torch.from_numpy(np.load(os.path.join(DEBIAN, "docs.f16.npy")))
    doc_ids = [line.strip() for line in open(os.path.join(DEBIAN, "doc_ids.txt"), encoding="utf-8")]
    qrels = read_qrels(os.path.join(DEBIAN, "qrels.dev.tsv"))
    qn, qids = load_qnets()
    Q = qn.num_queries
    base = graph_index(v16, doc_ids)
    assert torch.equal(base.vectors, v16), "the cached index holds other vectors"
    mach = {"cpu": cpu_model(), "cores": os.cpu_count(), "isa": cpu.isa(), "threads": engine.get_num_threads(),
            "load": os.getloadavg(), "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    print(f"# {mach['cpu']}, {mach['cores']} CPUs, ISA {mach['isa']}, {mach['threads']} engine threads, load "
          f"{', '.join(f'{x:.1f}' for x in mach['load'])} (a machine shared with other work: indicative timings)",
          flush=True)

    t = time.perf_counter()
    with precision_scope("fp32"):
        truth = engine.Index.from_vectors(v16).search(qn, args.k)
    t_truth = time.perf_counter() - t
    base_mrr = mrr10(truth.ids, truth.scores, qids, doc_ids, qrels)
    print(f"# float32 exact truth: {t_truth:.1f} s for {Q} queries, MRR@10 {base_mrr:.4f}", flush=True)

    rows = []
    for name in STORAGES:
        idx = base.to(dtype=name) if name != "float16" else base
        if idx.codes is None:
            t = time.perf_counter()
            idx.build_codes()
            codes_s = time.perf_counter() - t
        else:
            codes_s = 0.0
        kernel = cpu.kernel_name(cpu.uses_bf16(qn.dtype, idx.dtype))
        idx.search(qn[0], args.k)  # warm-up
        lat = []
        for i in range(min(args.latency_queries, Q)):
            t = time.perf_counter()
            idx.search(qn[i], args.k)
            lat.append(time.perf_counter() - t)
        t = time.perf_counter()
        ex = idx.search(qn, args.k)
        ex_qps = Q / (time.perf_counter() - t)
        idx.search(qn[0], args.k, mode="graph")  # warm-up
        glat, gids, gsc = [], [], []
        for i in range(Q):
            t = time.perf_counter()
            r = idx.search(qn[i], args.k, mode="graph")
            glat.append(time.perf_counter() - t)
            gids.append(r.ids)
            gsc.append(r.scores)
        gids, gsc = torch.cat(gids), torch.cat(gsc)
        row = {"storage": name, "vector MB": idx.vectors_nbytes / 2**20, "kernel": kernel,
               "exact p50 ms": 1e3 * statistics.median(lat), "exact b64 q/s": ex_qps,
               "exact R@10": recall10(ex.ids, truth.ids), "exact MRR@10": mrr10(ex.ids, ex.scores, qids, doc_ids, qrels),
               "graph p50 ms": 1e3 * statistics.median(glat), "graph R@10": recall10(gids, truth.ids),
               "graph MRR@10": mrr10(gids, gsc, qids, doc_ids, qrels), "codes build s": codes_s}
        rows.append(row)
        print(json.dumps(row), flush=True)
        del idx

    cols = list(rows[0])
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = [f"Debian set, 58,285 x 384, 64 dev q-nets; fp32 exact truth MRR@10 {base_mrr:.4f}; {mach['cpu']}, "
             f"ISA {mach['isa']}, {mach['threads']} threads, load {mach['load'][0]:.1f} (shared machine)", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    text = "\n".join(lines)
    print("\n" + text)
    out = args.json or os.path.join(HERE, "results", f"storage-{datetime.date.today():%Y%m%d}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"machine": mach, "truth_mrr10": base_mrr, "truth_seconds": t_truth, "rows": rows, "text": text,
                   "command": "python -m bench.bench_storage"}, f, indent=2, default=str)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
