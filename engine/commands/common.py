"""Helpers shared by the CLI commands."""

from __future__ import annotations

import argparse

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def print_table(headers: list[str], rows: list[list], file=None) -> None:
    """A plain aligned text table."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for j, r in enumerate(cells):
        # Labels (first column) left-aligned, values right-aligned.
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip(),
              file=file)
        if j == 0:
            print("  ".join("-" * w for w in widths), file=file)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a count, a size, a degree)."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0, "a non-negative integer")


def _int_at_least(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def add_backend_arg(p) -> None:
    p.add_argument("--backend", default="auto", help="auto (default), torch, cpu, triton or cuda")


def parse_dims(text: str) -> list[int]:
    try:
        dims = [int(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"--dims must be comma-separated integers, got {text!r}") from None
    return dims


def write_index(vectors, ids, output: str, graph_degree: int | None, *, storage: str | None = None) -> None:
    """Build an index (with an optional ``graph_degree``-neighbour graph; ``storage``: see
    :meth:`engine.Index.from_vectors`), save it to ``output`` and print what was written."""
    from ..index import Index

    index = Index.from_vectors(vectors, ids, storage=storage)
    if graph_degree is not None:
        index.build_graph(graph_degree)
    index.save(output)
    print(Index.load(output))


def read_ids(path: str) -> list[str]:
    """One external id per line (UTF-8, a byte-order mark skipped); an empty line is an error."""
    with open(path, encoding="utf-8-sig") as f:
        ids = f.read().splitlines()
    for i, x in enumerate(ids, 1):
        if not x.strip():
            raise ValueError(f"{path}:{i}: empty id (one id per line, no blank lines)")
    return ids
