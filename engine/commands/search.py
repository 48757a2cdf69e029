"""``python -m engine search``: top-k of an index for stored q-nets."""

from __future__ import annotations

from .common import add_backend_arg, print_table


def add_parser(sub) -> None:
    p = sub.add_parser("search", help="search an index")
    p.add_argument("--index", required=True, help="index directory")
    p.add_argument("--qnets", help="q-nets safetensors file (weight.i / bias.i)")
    p.add_argument("-k", type=int, default=10, help="results per query (default 10)")
    p.add_argument("--mode", choices=("exact", "graph"), default="exact")
    p.add_argument("--queries", type=int, default=None, help="use only the first N q-nets")
    add_backend_arg(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..index import Index
    from ..qnet import QNet

    if not args.qnets:
        raise ValueError("search needs --qnets FILE")
    index = Index.load(args.index)
    qnets = QNet.load(args.qnets)
    if args.queries is not None:
        qnets = qnets[: args.queries]
    result = index.search(qnets, args.k, mode=args.mode, backend=args.backend)
    ext = index.external_ids(result.ids)
    for q in range(qnets.num_queries):
        print(f"query {q}:")
        rows = [[r + 1, ext[q][r], f"{float(result.scores[q, r]):.4f}"] for r in range(args.k)
                if int(result.ids[q, r]) >= 0]
        print_table(["rank", "id", "score"], rows)
    print(f"{result.stats['mode']} search: {result.stats['seconds'] * 1e3:.1f} ms for {qnets.num_queries} queries")
    return 0
