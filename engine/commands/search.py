"""``python -m engine search``: top-k of an index for stored q-nets."""

from __future__ import annotations

from .common import add_backend_arg, positive_int, print_table
from .text_model import add_text_search_args, document_texts, text_qnets


def add_parser(sub) -> None:
    p = sub.add_parser("search", help="search an index")
    p.add_argument("--index", required=True, help="index directory (or sharded index directory)")
    p.add_argument("--qnets", help="q-nets safetensors file (weight.i / bias.i)")
    p.add_argument("-k", type=positive_int, default=10, help="results per query (default 10)")
    p.add_argument("--mode", choices=("exact", "graph"), default="exact")
    p.add_argument("--queries", type=positive_int, default=None, help="use only the first N q-nets")
    add_backend_arg(p)
    add_text_search_args(p)
    g = p.add_argument_group("sharded index (one process per rank under torchrun: "
                             "torchrun --nproc-per-node N -m engine search --index SHARDED ...)")
    g.add_argument("--timeout", type=positive_int, default=300,
                   help="seconds any one collective may take before every rank fails (default 300)")
    g.add_argument("--shard-device", choices=("cpu", "cuda"), default="cpu",
                   help="where each rank holds its shards: cpu (gloo, default) or cuda (its LOCAL_RANK GPU, NCCL)")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..distributed.manifest import is_sharded
    from ..index import Index

    if is_sharded(args.index):
        from ..distributed.cli import run_search

        return run_search(args)
    index = Index.load(args.index)
    qnets, labels = read_qnets(args, index)
    result = index.search(qnets, args.k, mode=args.mode, backend=args.backend)
    print_results(args, qnets, labels, result, index.external_ids(result.ids))
    print(f"{result.stats.mode} search: {result.stats.seconds * 1e3:.1f} ms for {qnets.num_queries} queries")
    return 0


def read_qnets(args, index):
    """``(qnets, query labels or None)`` from --qnets or from query texts through --model,
    on ``index.device``."""
    from ..qnet import QNet

    by_text = text_qnets(args, index)  # (qnets, texts) for query texts through --model
    if by_text is None and not args.qnets:
        raise ValueError('search needs --qnets FILE, or --model CHECKPOINT and query texts')
    qnets, labels = by_text if by_text else (QNet.load(args.qnets), None)
    if args.queries is not None:
        qnets = qnets[: args.queries]
    return qnets, labels


def print_results(args, qnets, labels, result, ext) -> None:
    """One table per query: rank, external id, score (and the document text with --corpus)."""
    texts = document_texts(args, ext)
    for q in range(qnets.num_queries):
        print(f"query {q}:" + (f" {labels[q]}" if labels else ""))
        rows = [[r + 1, ext[q][r], f"{float(result.scores[q, r]):.4f}"]
                + ([texts.get(str(ext[q][r]), "")] if texts is not None else [])
                for r in range(args.k) if int(result.ids[q, r]) >= 0]
        print_table(["rank", "id", "score"] + (["text"] if texts is not None else []), rows)
