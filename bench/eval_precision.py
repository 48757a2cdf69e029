"""What bf16 scoring costs on the debian-minilm dev set: exact search with the CPU
kernels' float32 path against their bfloat16 path, same q-nets, same documents.

The 1,000 dev queries are encoded once in the README's setting (max 32 tokens, batches of
50, float32 q-nets); the documents are ``docs.f16.npy`` as stored (float16, which the
float32 path converts exactly). Each precision policy (``fp32``, ``bf16``; see
engine.native_args) runs exact top-1000 search over all 58,285 documents. Printed: MRR@10,
nDCG@10 and Recall@1000 of each (ir-measures), and of the bf16 run against the fp32 one:
recall@10 (the share of fp32's top 10 that bf16 also returns in its top 10, averaged
over queries), the share of queries whose top 1 is the same, and the score differences
on fp32's top 10 (bf16 rescoring the same documents) in score units and relative to the
spread of the query's fp32 top-k scores (a query's best scores can sit near zero: the
scores span about -50..50 over the corpus). Also the kernel each path ran and its search
time (only indicative on a shared machine).

With ``--kernels``, one more check on a subset: the same q-nets scored over the first
``--kernel-docs`` documents by every bf16 kernel this machine can run (avx512_bf16,
amx_emulated, amx): their scores differ only by float32 summation order.

    HF_HUB_OFFLINE=1 python bench/eval_precision.py [--limit N] [--kernels] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "debian-minilm"


def encode(data: Path, limit, chunk: int = 100):
    from engine.hf import HypencoderModel
    from engine.jsonl import read_jsonl
    from engine.qnet import QNet

    qids, texts = read_jsonl(data / "queries.dev.jsonl", limit=limit)
    model = HypencoderModel.from_pretrained(data / "checkpoint", device="cpu", dtype=torch.float32)
    parts = [model.encode_queries(texts[s:s + chunk], batch_size=50, max_length=32)
             for s in range(0, len(texts), chunk)]
    W = [torch.cat([p.weights[i] for p in parts]) for i in range(len(parts[0].weights))]
    B = [torch.cat([p.biases[i] for p in parts]) for i in range(len(parts[0].biases))]
    return qids, QNet(W, B, parts[0].config)


def first_of_each_id(doc_ids, ids, scores):
    """Ranked ids and scores with only the first row of each document id (doc_ids.txt
    repeats a few package names: 58,236 distinct ids for 58,285 rows)."""
    out_ids, out_s = [], []
    for row, ss in zip(ids.numpy(), scores.tolist()):
        seen, di, ds = set(), [], []
        for r, x in zip(row, ss):
            d = doc_ids[r]
            if d not in seen:
                seen.add(d)
                di.append(d)
                ds.append(x)
        out_ids.append(di)
        out_s.append(ds)
    return out_ids, out_s


def main(argv=None) -> int:
    from engine.backends import cpu
    from engine.eval import evaluate, read_qrels, run_from_result

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--limit", type=int, default=None, help="first N dev queries only")
    p.add_argument("-k", type=int, default=1000)
    p.add_argument("--kernels", action="store_true", help="also compare the bf16 kernels on a subset")
    p.add_argument("--kernel-docs", type=int, default=4096)
    p.add_argument("--kernel-queries", type=int, default=16)
    p.add_argument("--json", help="write the figures to this JSON file")
    args = p.parse_args(argv)
    data = Path(args.data)

    vectors = torch.from_numpy(np.load(data / "docs.f16.npy"))
    doc_ids = np.array((data / "doc_ids.txt").read_text(encoding="utf-8").splitlines())
    qrels = read_qrels(data / "qrels.dev.tsv")
    t = time.perf_counter()
    qids, qn = encode(data, args.limit)
    from bench_cpu import cpu_model

    print(f"# machine: {cpu_model()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, ISA {cpu.isa()} (supported: "
          f"{', '.join(cpu.supported_isas())}; amx: {cpu.isa_status('amx')}); load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"# {qn.num_queries} queries encoded in {time.perf_counter() - t:.0f} s; documents "
          f"{tuple(vectors.shape)} {vectors.dtype}; exact top-{args.k}")
    judged = {q: r for q, r in qrels.items() if q in set(qids)}

    res = {}
    for prec in ("fp32", "bf16"):
        cpu.set_precision(prec)
        kernel = cpu.kernel_name(cpu.uses_bf16(qn.dtype, vectors.dtype))
        t = time.perf_counter()
        s, i = cpu.exact_topk(qn.weights, qn.biases, qn.config, vectors, args.k)
        dt = time.perf_counter() - t
        run = run_from_result(qids, *first_of_each_id(doc_ids, i, s))
        res[prec] = {"scores": s, "ids": i, "metrics": evaluate(run, judged), "seconds": dt, "kernel": kernel}
    cpu.set_precision("auto")

    f32, b16 = res["fp32"], res["bf16"]
    top10 = [len(set(a[:10]) & set(b[:10])) / 10 for a, b in zip(f32["ids"].tolist(), b16["ids"].tolist())]
    same1 = float((f32["ids"][:, 0] == b16["ids"][:, 0]).float().mean())
    # score differences on the same documents: bf16 rescoring of fp32's top 10
    cpu.set_precision("bf16")
    ids10 = f32["ids"][:, :10].contiguous()
    s_b = cpu.score_gather(qn.weights, qn.biases, qn.config, vectors, ids10)
    cpu.set_precision("auto")
    diff = (s_b - f32["scores"][:, :10]).abs().max(dim=1).values
    spread = f32["scores"][:, 0] - f32["scores"][:, -1]
    rel = diff / spread

    print("\n| precision | kernel | MRR@10 | nDCG@10 | Recall@1000 | search s |")
    print("|---|---|---|---|---|---|")
    for prec, r in res.items():
        m = r["metrics"]
        print(f"| {prec} | {r['kernel']} | {m['MRR@10']:.4f} | {m['nDCG@10']:.4f} | {m['Recall@1000']:.4f} "
              f"| {r['seconds']:.1f} |")
    print(f"\nbf16 against fp32, {len(top10)} queries: recall@10 {np.mean(top10):.4f} (min {min(top10):.1f}), "
          f"same top 1 {same1:.4f}, MRR@10 {b16['metrics']['MRR@10'] - f32['metrics']['MRR@10']:+.4f}; "
          f"largest score difference on fp32's top 10 per query: median {float(diff.median()):.3g}, max "
          f"{float(diff.max()):.3g} (score units; the top-{args.k} scores of a query span {float(spread.median()):.3g} "
          f"at the median), relative to that span: median {float(rel.median()):.2e}, max {float(rel.max()):.2e}")
    summary = {"queries": len(top10), "recall10_vs_fp32": float(np.mean(top10)), "same_top1": same1,
               "score_diff_median": float(diff.median()), "score_diff_max": float(diff.max()),
               "topk_spread_median": float(spread.median()),
               "score_rel_diff_median": float(rel.median()), "score_rel_diff_max": float(rel.max()),
               **{p: {**r["metrics"], "seconds": r["seconds"], "kernel": r["kernel"]} for p, r in res.items()}}

    if args.kernels:
        summary["kernels"] = compare_kernels(qn, vectors, args.kernel_queries, args.kernel_docs)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


def compare_kernels(qn, vectors, nq: int, nd: int) -> dict:
    """Scores of every bf16 kernel this machine runs, on nq queries x nd documents."""
    from engine.backends import cpu

    W = [w[:nq] for w in qn.weights]
    B = [b[:nq] for b in qn.biases]
    v = vectors[:nd]
    before = cpu.isa()
    cpu.set_precision("bf16")
    out = {}
    try:
        for isa in ("avx512_bf16", "amx_emulated", "amx"):
            if cpu.isa_status(isa) != "ok":
                print(f"{isa}: skipped ({cpu.isa_status(isa)})")
                continue
            cpu.set_isa(isa)
            out[isa] = cpu.score_dense(W, B, qn.config, v)
    finally:
        cpu.set_isa(before)
        cpu.set_precision("auto")
    names = list(out)
    res = {}
    for a in names:
        for b in names:
            if a < b:
                d = float((out[a] - out[b]).abs().max() / out[a].abs().max())
                same = float((out[a].topk(10).indices.sort().values == out[b].topk(10).indices.sort().values)
                             .all(dim=1).float().mean())
                print(f"{a} vs {b}, {nq} queries x {nd} documents: max |diff| / max |score| {d:.2e}, "
                      f"same top-10 set for {same:.2f} of the queries")
                res[f"{a}/{b}"] = {"rel_diff": d, "same_top10": same}
    return res


if __name__ == "__main__":
    sys.exit(main())
