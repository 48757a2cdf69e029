"""Dev-set retrieval quality of the debian-minilm checkpoint through the engine.

Reproduces the README's setting of the 0.3876 MRR@10 -- queries tokenized at 32 tokens in
batches of 50, q-nets in float32, docs.f16.npy upcast to float32, exact search -- and, with
``--modes exact,graph``, reports graph search beside it.

    HF_HUB_OFFLINE=1 python bench/eval_debian.py [--limit N] [--modes exact,graph] [--graph-degree R]
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
README_MRR10 = 0.3876  # the data set README's figure for this checkpoint, exact search


def main(argv=None) -> int:
    from tqdm.auto import tqdm

    from engine.commands.common import print_table
    from engine.commands.eval import evaluate_index
    from engine.eval import read_qrels
    from engine.hf import HypencoderModel
    from engine.index import Index
    from engine.jsonl import read_jsonl

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--limit", type=int, default=None, help="first N dev queries only")
    p.add_argument("--modes", default="exact", help="comma-separated: exact, graph")
    p.add_argument("--graph-degree", type=int, default=32)
    p.add_argument("--backend", default="auto")
    p.add_argument("--chunk", type=int, default=100)
    p.add_argument("--json", help="write the figures to this JSON file")
    args = p.parse_args(argv)
    data = Path(args.data)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]

    vectors = torch.from_numpy(np.load(data / "docs.f16.npy")).float()
    doc_ids = (data / "doc_ids.txt").read_text(encoding="utf-8").splitlines()
    index = Index.from_vectors(vectors, doc_ids)
    if "graph" in modes:
        t = time.perf_counter()
        index.build_graph(args.graph_degree)
        print(f"graph (R={args.graph_degree}) built in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    qids, texts = read_jsonl(data / "queries.dev.jsonl", limit=args.limit)
    qrels = read_qrels(data / "qrels.dev.tsv")
    model = HypencoderModel.from_pretrained(data / "checkpoint", device="cpu", dtype=torch.float32)

    def chunks():
        for s in range(0, len(texts), args.chunk):
            yield s, model.encode_queries(texts[s:s + args.chunk], batch_size=50, max_length=32)

    t0 = time.perf_counter()
    with tqdm(total=len(texts), desc="queries", unit="q") as bar:
        results = evaluate_index(index, chunks(), qids, qrels, 1000, modes, args.backend, progress=bar)
    wall = time.perf_counter() - t0

    rows, summary = [], {"queries": len(texts), "readme_mrr10": README_MRR10, "wall_seconds": wall}
    for mode, r in results.items():
        if "error" in r:
            rows.append([mode, "unavailable", "", "", "", "", r["error"][:60]])
            summary[mode] = {"error": r["error"]}
            continue
        m = r["metrics"]
        rows.append([mode, f"{m['MRR@10']:.4f}", f"{m['MRR@10'] - README_MRR10:+.4f}", f"{m['nDCG@10']:.4f}",
                     f"{m['Recall@1000']:.4f}", f"{1e3 * r['seconds'] / len(texts):.0f}", ""])
        summary[mode] = {**m, "search_seconds": r["seconds"]}
    print(f"debian-minilm dev, {len(texts)} queries, README exact MRR@10 = {README_MRR10}")
    print_table(["search", "MRR@10", "vs README", "nDCG@10", "Recall@1000", "ms/query", "note"], rows)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
