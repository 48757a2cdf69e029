"""``python -m engine shard``: split an index into shards (each an ordinary index) under a
sharded manifest, or write the manifest of shards built one by one."""

from __future__ import annotations

import sys

from .common import non_negative_int, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser(
        "shard", help="split an index into shards for sharded search (or name shards built one by one)",
        description="python -m engine shard IDX OUT --shards N   |   python -m engine shard OUT --join SHARD...")
    p.add_argument("paths", nargs="+", metavar="IDX OUT", help="the index to split and the directory to write "
                   "(with --join: only the directory to write)")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--shards", type=positive_int, metavar="N", help="N shards of equal size")
    how.add_argument("--sizes", metavar="N0,N1,...", help="the row count of each shard, in order (0 allowed)")
    how.add_argument("--join", nargs="+", metavar="SHARD", help="index directories built one by one, in row order")
    p.add_argument("--graph", type=positive_int, metavar="R",
                   help="build an R-neighbour graph per shard (default: as the source, if it has one)")
    p.add_argument("--no-graph", action="store_true", help="no graphs, even if the source has one")
    p.add_argument("--code-bytes", type=positive_int, metavar="B",
                   help="candidate code bytes per document (default: as the source; 64 with --graph)")
    p.add_argument("--verify", action="store_true", help="check every source file's SHA-256 first")
    p.set_defaults(run=run)


def _sizes(text: str) -> list[int]:
    try:
        return [non_negative_int(x) for x in text.split(",")]
    except Exception:
        raise ValueError(f"--sizes must be comma-separated non-negative integers, got {text!r}") from None


def run(args) -> int:
    from ..distributed import join_shards, shard_index

    if args.join:
        if len(args.paths) != 1:
            raise ValueError("with --join give only the directory to write: shard OUT --join SHARD [SHARD ...]")
        if args.graph or args.no_graph or args.code_bytes:
            raise ValueError("--graph, --no-graph and --code-bytes apply to a split, not to --join")
        m = join_shards(args.paths[0], args.join, verify=args.verify)
    else:
        if len(args.paths) != 2:
            raise ValueError("give the index to split and the directory to write: shard IDX OUT --shards N")
        if args.graph and args.no_graph:
            raise ValueError("--graph and --no-graph exclude each other")
        graph = False if args.no_graph else args.graph
        codes = args.code_bytes if args.code_bytes else (64 if args.graph else None)
        sizes = _sizes(args.sizes) if args.sizes else None
        m = shard_index(args.paths[0], args.paths[1], args.shards, sizes=sizes, graph=graph, codes=codes,
                        verify=args.verify, progress=True)
    print(f"sharded index {m.root}: {m.count:,d} documents of dim {m.dim} ({m.dtype}), ids {m.ids}, "
          f"{len(m.shards)} shards", file=sys.stdout)
    for i, s in enumerate(m.shards):
        extra = ", graph" * s.graph + ", codes" * s.codes
        print(f"  shard {i}: {s.path}  rows {s.offset:,d}..{s.offset + s.count:,d} ({s.count:,d}{extra})")
    return 0
