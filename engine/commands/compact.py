"""``python -m engine compact IDX``: rewrite an index without its deleted rows."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("compact", help="rewrite an index without its deleted (tombstoned) rows, atomically")
    p.add_argument("index", help="index directory")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..index import Index

    idx = Index.load(args.index)
    before = len(idx)
    idx.compact()
    print(f"{args.index}: {before - len(idx)} deleted rows removed, {len(idx)} kept")
    return 0
