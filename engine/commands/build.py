"""``python -m engine build``: an index from a .npy matrix or synthetic vectors."""

from __future__ import annotations

from .common import DTYPES, write_index


def add_parser(sub) -> None:
    p = sub.add_parser("build", help="build an index from vectors (.npy) or synthetic data")
    p.add_argument("output", help="index directory to write")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--vectors", help="(n, d) float32/float16 .npy file")
    src.add_argument("--synthetic", type=int, metavar="N", help="N synthetic structured vectors")
    p.add_argument("--dim", type=int, default=768, help="width of synthetic vectors")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ids", help="text file with one external id per line")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="stored dtype (default: as given; bfloat16 for synthetic)")
    p.add_argument("--graph", type=int, metavar="R",
                   help="also build what graph search needs: an R-neighbour graph and the candidate codes")
    p.set_defaults(run=run)


def run(args) -> int:
    import numpy as np
    import torch

    from .. import synthetic
    from ..index import Index

    if args.synthetic is not None:
        if args.ids:
            raise ValueError("--ids needs --vectors (synthetic documents are numbered)")
        synthetic.write_index(args.output, args.synthetic, args.dim, seed=args.seed,
                              dtype=DTYPES[args.dtype or "bfloat16"], progress=True)
        if args.graph:
            # The vectors stay where they were streamed (memory-mapped; the save links them).
            index = Index.load(args.output)
            index.build_graph(args.graph, progress=True)
            index.save(args.output)
    else:
        arr = np.load(args.vectors, mmap_mode="c")  # copy-on-write: a writable view, read lazily
        vectors = torch.from_numpy(np.ascontiguousarray(arr))
        if args.dtype:
            vectors = vectors.to(DTYPES[args.dtype])
        ids = None
        if args.ids:
            with open(args.ids, encoding="utf-8") as f:
                ids = [line.rstrip("\n") for line in f]
        write_index(vectors, ids, args.output, args.graph)
        return 0
    print(Index.load(args.output))
    return 0
