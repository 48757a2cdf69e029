"""``python -m engine eval``: queries (JSONL) + qrels -> TREC run file(s) and MRR@10, nDCG@10,
Recall@1000, for exact search and, when the index has (or is given) a graph, graph search."""

from __future__ import annotations

import json
import os
import sys

from .common import add_backend_arg, print_table
from .text_model import add_model_args, encode_queries, load_model


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate retrieval on queries + qrels (TREC run and metrics)")
    p.add_argument("--index", required=True, help="index directory (its ids must be the qrels' document ids)")
    p.add_argument("--queries", required=True, help="JSONL file, one {'id': ..., 'text': ...} per line")
    p.add_argument("--qrels", required=True, help="TREC qrels file (qid iter docid relevance)")
    p.add_argument("--qnets", help="pre-computed q-nets of the queries, in file order (instead of --model)")
    p.add_argument("--run", dest="run_file", default="run.trec",
                   help="TREC run file to write (default run.trec; graph search writes NAME.graph.EXT)")
    p.add_argument("-k", type=int, default=1000, help="results per query (default 1000, for Recall@1000)")
    p.add_argument("--limit", type=int, default=None,
                   help="evaluate only the first N queries (metrics over those queries)")
    p.add_argument("--chunk", type=int, default=100, help="queries encoded and searched at a time (default 100)")
    p.add_argument("--graph", type=int, nargs="?", const=32, default=None, metavar="R",
                   help="also run graph search; builds an R-neighbour graph (default 32) if the index has none")
    p.add_argument("--json", help="also write the results as JSON to this file")
    add_backend_arg(p)
    add_model_args(p)
    p.set_defaults(run=run)


def _graph_run_path(path: str) -> str:
    root, ext = os.path.splitext(path)
    return f"{root}.graph{ext or '.trec'}"


def evaluate_index(index, qnet_chunks, query_ids, qrels, k: int, modes, backend: str = "auto", progress=None):
    """Search every chunk of q-nets in every mode; returns ``{mode: {"run", "metrics",
    "seconds"}}`` plus ``{mode: {"error"}}`` for a mode that could not run.

    ``qnet_chunks`` yields ``(start, QNet)`` in query order.
    """
    from ..eval import evaluate, run_from_result

    runs = {m: {} for m in modes}
    seconds = {m: 0.0 for m in modes}
    errors = {}
    for start, qnets in qnet_chunks:
        qids = query_ids[start:start + qnets.num_queries]
        for mode in [m for m in modes if m not in errors]:
            try:
                res = index.search(qnets, k, mode=mode, backend=backend)
            except (ImportError, NotImplementedError) as e:  # a search mode not available in this build
                errors[mode] = f"{type(e).__name__}: {e}"
                continue
            seconds[mode] += res.stats.seconds
            runs[mode].update(run_from_result(qids, index.external_ids(res.ids), res.scores))
        if progress is not None:
            progress.update(qnets.num_queries)
    # Only the evaluated queries' judgements: a --limit subset is averaged over itself.
    evaluated = set(query_ids)
    judged = {q: r for q, r in qrels.items() if q in evaluated}
    if not judged:
        raise ValueError("none of the queries has judgements in the qrels (do the query ids match?)")
    out = {}
    for mode in modes:
        if mode in errors:
            out[mode] = {"error": errors[mode]}
            continue
        out[mode] = {"run": runs[mode], "metrics": evaluate(runs[mode], judged), "seconds": seconds[mode],
                     "queries": len(judged)}
    return out


def run(args) -> int:
    from tqdm.auto import tqdm

    from ..eval import _ir_measures, read_qrels, write_run
    from ..index import Index
    from ..jsonl import read_jsonl
    from ..qnet import QNet

    if bool(args.model) == bool(args.qnets):
        raise ValueError("eval needs exactly one of --model CHECKPOINT or --qnets FILE")
    try:
        _ir_measures()  # fail before any encoding or search when the metrics cannot be computed
    except ImportError as e:
        raise RuntimeError(str(e)) from e
    if args.chunk < 1:
        raise ValueError(f"--chunk must be >= 1, got {args.chunk}")
    query_ids, texts = read_jsonl(args.queries, limit=args.limit)
    qrels = read_qrels(args.qrels)
    index = Index.load(args.index)
    if index.ids_kind == "none":
        print("warning: the index stores no ids; row numbers are compared with the qrels' document ids",
              file=sys.stderr)

    modes = ["exact"]
    if args.graph is not None or index.graph is not None:
        modes.append("graph")
        if index.graph is None:
            print(f"building a {args.graph}-neighbour graph ...", file=sys.stderr)
            index.build_graph(args.graph)

    if args.model:
        model = load_model(args)

        def chunks():
            for s in range(0, len(texts), args.chunk):
                yield s, encode_queries(model, texts[s:s + args.chunk], args, device=index.device)
    else:
        all_qnets = QNet.load(args.qnets)
        if all_qnets.num_queries < len(texts):
            raise ValueError(f"{args.qnets} holds {all_qnets.num_queries} q-nets for {len(texts)} queries")

        def chunks():
            for s in range(0, len(texts), args.chunk):
                yield s, all_qnets[s:min(s + args.chunk, len(texts))].to(device=index.device)

    with tqdm(total=len(texts), desc="queries", unit="q") as bar:
        results = evaluate_index(index, chunks(), query_ids, qrels, args.k, modes, args.backend, progress=bar)

    rows, summary = [], {}
    for mode, r in results.items():
        if "error" in r:
            print(f"{mode} search unavailable: {r['error']}", file=sys.stderr)
            summary[mode] = {"error": r["error"]}
            continue
        path = args.run_file if mode == "exact" else _graph_run_path(args.run_file)
        write_run(path, r["run"], tag=f"hypencoder-{mode}")
        m = r["metrics"]
        rows.append([mode, f"{m['MRR@10']:.4f}", f"{m['nDCG@10']:.4f}", f"{m['Recall@1000']:.4f}",
                     r["queries"], f"{1e3 * r['seconds'] / len(texts):.1f}", path])
        summary[mode] = {**m, "queries": r["queries"], "search_seconds": r["seconds"], "run_file": path}
    print_table(["search", "MRR@10", "nDCG@10", "Recall@1000", "queries", "ms/query", "run file"], rows)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
    return 0 if rows else 2
