"""``python -m engine demo``: build a synthetic index, search it, print timings and results."""

from __future__ import annotations

import os
import tempfile
import time

from .common import add_backend_arg, print_table

DEFAULT_N = 50_000
DEFAULT_DIM = 384


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="a synthetic end-to-end run with timings")
    p.add_argument("--n", type=int, default=DEFAULT_N, help=f"documents (default {DEFAULT_N:,})")
    p.add_argument("--dim", type=int, default=DEFAULT_DIM, help=f"vector width (default {DEFAULT_DIM})")
    p.add_argument("--layers", type=int, default=2, help="hidden q-net layers (default 2)")
    p.add_argument("--queries", type=int, default=4)
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--dir", help="where to write the index (default: a temporary directory)")
    add_backend_arg(p)
    p.set_defaults(run=run)


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def run(args) -> int:
    import torch

    from .. import backends, synthetic
    from ..index import Index

    root = args.dir or tempfile.mkdtemp(prefix="hypencoder-demo-")
    path = os.path.join(root, "index")
    print(f"building a synthetic index of {args.n:,} x {args.dim} bfloat16 vectors in {path}")
    _, t_build = _timed(lambda: synthetic.write_index(path, args.n, args.dim, dtype=torch.bfloat16, progress=True))
    index, t_load = _timed(lambda: Index.load(path))
    dims = [args.dim] * (args.layers + 1) + [1]
    qnets = synthetic.qnets(args.queries, dims, seed=1)
    backend = backends.resolve_name(args.backend, "cpu")
    print(f"{qnets}; backend: {backend}")
    result = index.search(qnets, args.k, backend=args.backend)
    timings = [
        ["write index", f"{t_build * 1e3:.1f}"],
        ["open index (mmap)", f"{t_load * 1e3:.1f}"],
        [f"exact search, {args.queries} queries", f"{result.stats.seconds * 1e3:.1f}"],
        ["exact search, per query", f"{result.stats.seconds * 1e3 / args.queries:.1f}"],
    ]
    try:
        from ..graph import build as _graph_build  # noqa: F401

        # The clustered k-NN build: seconds instead of the exact build's half minute here.
        _, t_graph = _timed(lambda: index.build_graph(16, method="cluster"))
        gres = index.search(qnets, args.k, mode="graph", backend=args.backend)
        hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(gres.ids, result.ids))
        timings += [
            ["build graph (R=16, clustered k-NN)", f"{t_graph * 1e3:.1f}"],
            [f"graph search, {args.queries} queries", f"{gres.stats.seconds * 1e3:.1f}"],
            [f"graph recall@{args.k} vs exact", f"{hits / result.ids.numel():.3f}"],
        ]
    except ImportError:
        pass
    print_table(["step", "ms"], timings)
    for q in range(args.queries):
        rows = [[r + 1, int(result.ids[q, r]), f"{float(result.scores[q, r]):.3f}"] for r in range(args.k)]
        print(f"\nquery {q}: top {args.k}")
        print_table(["rank", "doc", "score"], rows)
    return 0
